//! Group commit: the session writes of the hot path share one transaction
//! and one commit (see `Engine::grouped`).

use sqlx::Pool;

use crate::StoreError;

use super::Engine;
use super::dialect::{BEGIN_WRITE, Db, DbConnection};

/// A write waiting for a group transaction: it runs on the group's
/// connection and says whether it succeeded, with what to do once the
/// group's fate (committed or not) is known.
pub(super) type Job = Box<dyn for<'c> FnOnce(&'c mut DbConnection) -> BoxFuture<'c, Done> + Send>;
/// Whether the job's writes stand, and how to answer its caller once the
/// group's commit is known (`Err`: the commit failed, with why).
type Done = (bool, Box<dyn FnOnce(Result<(), String>) + Send>);
pub(super) type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The most writes one group transaction carries.
pub(super) const GROUP_MAX: usize = 256;

impl Engine {
    /// Runs `write` in a group transaction and answers once that is
    /// durable (group commit): concurrent writes share one commit, so one
    /// fsync, instead of paying one each. Each write runs in a savepoint
    /// of its own: one that fails is rolled back alone and its caller gets
    /// its error, while the others commit. The caller is answered only
    /// after the commit, so an acknowledged write is durable, and a failed
    /// commit fails every write of the group (none of them is stored).
    ///
    /// Writes to one session always go to the same group writer, so that
    /// two groups never wait for each other's lock on a session (on
    /// PostgreSQL, where several groups write at once, that could deadlock).
    pub(super) async fn grouped<T, W>(&self, session_id: &str, write: W) -> Result<T, StoreError>
    where
        T: Send + 'static,
        W: for<'c> FnOnce(&'c mut DbConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |connection| {
            Box::pin(async move {
                let result = write(connection).await;
                let stands = result.is_ok();
                let answer: Box<dyn FnOnce(Result<(), String>) + Send> =
                    Box::new(move |committed| {
                        let result = match committed {
                            Ok(()) => result,
                            Err(why) => result.and(Err(StoreError::Unavailable(why))),
                        };
                        let _ = reply.send(result);
                    });
                (stands, answer)
            })
        });
        let group = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::hash::DefaultHasher::new();
            session_id.hash(&mut hasher);
            hasher.finish() as usize % self.groups.len()
        };
        self.groups[group]
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        // Dropped unanswered: the group failed before its commit (logged
        // by the group writer), and none of its writes is stored.
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the write could not be committed".into()))?
    }
}

/// Takes whatever writes are waiting (at least one, at most `GROUP_MAX`)
/// and commits them together, until the store is dropped.
pub(super) async fn group_writer(writer: Pool<Db>, mut jobs: tokio::sync::mpsc::Receiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP_MAX
            && let Ok(job) = jobs.try_recv()
        {
            group.push(job);
        }
        // In a task of its own: a panicking write fails its group (whose
        // callers see their answers dropped), not the writer.
        if let Err(error) = tokio::spawn(commit_group(writer.clone(), group)).await {
            tracing::error!(%error, "a write group panicked; its writes were rolled back");
        }
    }
}

/// One group transaction; a lone write's failure rolls it all back.
async fn commit_group(writer: Pool<Db>, group: Vec<Job>) {
    let outcome: Result<(), StoreError> = async {
        let mut tx = writer.begin_with(BEGIN_WRITE).await?;
        // A lone write needs no savepoint. Between two writes, the release
        // of one savepoint and the start of the next are one round trip.
        let total = group.len();
        let savepoints = total > 1;
        if savepoints {
            sqlx::raw_sql("SAVEPOINT grouped_write").execute(&mut *tx).await?;
        }
        let mut answers = Vec::with_capacity(total);
        let mut any_stands = false;
        for (n, job) in group.into_iter().enumerate() {
            let (stands, answer) = job(&mut tx).await;
            if savepoints {
                if !stands {
                    sqlx::raw_sql("ROLLBACK TO SAVEPOINT grouped_write").execute(&mut *tx).await?;
                }
                let close = if n + 1 < total {
                    "RELEASE SAVEPOINT grouped_write; SAVEPOINT grouped_write"
                } else {
                    "RELEASE SAVEPOINT grouped_write"
                };
                sqlx::raw_sql(close).execute(&mut *tx).await?;
            }
            any_stands |= stands;
            answers.push(answer);
        }
        let committed = if any_stands {
            tx.commit().await.map_err(|error| StoreError::from(error).to_string())
        } else {
            // Nothing to keep (all failed, or only reads and no-ops).
            tx.rollback().await.map_err(|error| StoreError::from(error).to_string())
        };
        for answer in answers {
            answer(committed.clone());
        }
        Ok(())
    }
    .await;
    if let Err(error) = outcome {
        tracing::warn!(%error, "a write group failed before its commit; its writes were not stored");
    }
}
