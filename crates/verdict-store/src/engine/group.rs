//! Group commit: the session writes of the hot path share one transaction
//! and one commit (see `Engine::grouped`).

use std::sync::Arc;

use sqlx::Pool;
use tracing::{Instrument, Span};

use crate::{Ended, StoreError};

use super::Engine;
use super::dialect::{BEGIN_GROUP, Db, DbConnection};
use super::ends::{EndWrite, end_group, lock_sessions};

/// A write waiting for a group transaction.
///
/// Each carries its caller's span (an HTTP request's, with its request
/// id): the group runs on another task, and what it logs of one write is
/// logged in that write's span.
pub(super) enum Job {
    /// An end, written set-wise with the group's other ends.
    End(Box<EndWrite>, tokio::sync::oneshot::Sender<Result<Ended, StoreError>>, Span),
    /// Any other session write: it runs on the group's connection in a
    /// savepoint of its own and says whether it succeeded, with what to do
    /// once the group's fate (committed or not) is known.
    Write(String, WriteJob, Span),
}

pub(super) type WriteJob =
    Box<dyn for<'c> FnOnce(&'c mut DbConnection) -> BoxFuture<'c, Done> + Send>;
/// Whether the job's writes stand, and how to answer its caller once the
/// group's commit is known (`Err`: the commit failed, with why).
type Done = (bool, Answer);
type Answer = Box<dyn FnOnce(Result<(), String>) + Send>;
pub(super) type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Runs a group of ends in a transaction of its own away from the sqlx
/// connection (SQLite: the whole group on one thread, no hop per
/// statement), answering once it is committed: each end's answer, or why
/// the group failed (none of it stored).
pub(crate) trait EndsRunner: Send + Sync {
    fn run(&self, writes: Vec<EndWrite>) -> tokio::sync::oneshot::Receiver<GroupAnswers>;
    /// Finishes the group in hand and stops: nothing runs afterwards.
    fn close(&self);
}

pub(crate) type GroupAnswers = Result<Vec<Result<Ended, StoreError>>, StoreError>;

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
        let job: WriteJob = Box::new(move |connection| {
            Box::pin(async move {
                let result = write(connection).await;
                let stands = result.is_ok();
                (stands, answer_after_commit(result, reply))
            })
        });
        self.queue(session_id, Job::Write(session_id.to_owned(), job, Span::current())).await?;
        // Dropped unanswered: the group failed before its commit (logged
        // by the group writer), and none of its writes is stored.
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the write could not be committed".into()))?
    }

    /// Ends a session in a group transaction, set-wise with the group's
    /// other ends (see `ends.rs`), and answers once that is durable.
    pub(super) async fn grouped_end(&self, write: EndWrite) -> Result<Ended, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let id = write.id.clone();
        self.queue(&id, Job::End(Box::new(write), reply, Span::current())).await?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the write could not be committed".into()))?
    }

    /// Queues `job` to the group writer of its session: writes to one
    /// session always go to the same one, so that two groups of one
    /// process rarely wait for each other's lock on a session.
    async fn queue(&self, session_id: &str, job: Job) -> Result<(), StoreError> {
        let group = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::hash::DefaultHasher::new();
            session_id.hash(&mut hasher);
            hasher.finish() as usize % self.groups.len()
        };
        self.groups[group]
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))
    }
}

/// Takes whatever writes are waiting (at least one, at most `GROUP_MAX`)
/// and commits them together, until the store is dropped.
pub(super) async fn group_writer(
    writer: Pool<Db>,
    runner: Option<Arc<dyn EndsRunner>>,
    mut jobs: tokio::sync::mpsc::Receiver<Job>,
) {
    while let Some(first) = jobs.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP_MAX
            && let Ok(job) = jobs.try_recv()
        {
            group.push(job);
        }
        // In a task of its own: a panicking write fails its group (whose
        // callers see their answers dropped), not the writer.
        let group = match &runner {
            Some(runner) if group.iter().all(|job| matches!(job, Job::End(..))) => {
                run_elsewhere(runner.as_ref(), group).await;
                continue;
            }
            _ => group,
        };
        if let Err(error) = tokio::spawn(commit_group(writer.clone(), group)).await {
            tracing::error!(%error, "a write group panicked; its writes were rolled back");
        }
    }
}

/// One group transaction. Its sessions are locked first, in id order and
/// in one statement (so that groups of several processes never deadlock);
/// then the other writes run, each in a savepoint of its own; then the
/// ends, set-wise. A set-wise statement that fails unexpectedly sends the
/// ends back one at a time, each in a savepoint, so that one bad write
/// never fails the others. A failed commit fails every write.
async fn commit_group(writer: Pool<Db>, group: Vec<Job>) {
    metrics::histogram!("verdict_write_group_size").record(group.len() as f64);
    let started = std::time::Instant::now();
    let mut ends = Vec::new();
    let mut writes = Vec::new();
    for job in group {
        match job {
            Job::End(write, reply, span) => ends.push((*write, (reply, span))),
            Job::Write(session_id, job, span) => writes.push((session_id, job, span)),
        }
    }
    let mut answers: Vec<Answer> = Vec::with_capacity(writes.len() + ends.len());
    let mut spans: Vec<Span> = Vec::with_capacity(answers.capacity());
    let outcome: Result<(), StoreError> = async {
        let mut tx = writer.begin_with(BEGIN_GROUP).await?;
        if writes.len() + ends.len() > 1 && !writes.is_empty() {
            let ids: Vec<String> = writes
                .iter()
                .map(|(id, ..)| id.clone())
                .chain(ends.iter().map(|(write, _)| write.id.clone()))
                .collect();
            lock_sessions(&mut tx, &ids).await?;
        }
        let mut any_stands = false;
        for (_, job, span) in writes {
            let (stands, answer) = in_savepoint(&mut tx, job).instrument(span.clone()).await?;
            any_stands |= stands;
            answers.push(answer);
            spans.push(span);
        }
        let (writes, replies): (Vec<EndWrite>, Vec<_>) = ends.into_iter().unzip();
        let results = if writes.is_empty() {
            Vec::new()
        } else if answers.is_empty() {
            // Only ends: no savepoint (under one, SQLite copies every page
            // the group changes to a sub-journal). Should a statement fail,
            // the transaction is begun again and each end tried alone.
            match end_group(&mut tx, &writes).await {
                Ok(results) => results,
                Err(error) if writes.len() == 1 => vec![Err(error)],
                Err(error) => {
                    tracing::warn!(%error, ends = writes.len(), "a set-wise end failed; ending one at a time");
                    tx.rollback().await?;
                    tx = writer.begin_with(BEGIN_GROUP).await?;
                    // In id order first, as the group did: one end at a
                    // time would otherwise lock them in arrival order.
                    let ids: Vec<String> = writes.iter().map(|write| write.id.clone()).collect();
                    lock_sessions(&mut tx, &ids).await?;
                    one_at_a_time(&mut tx, &writes).await?
                }
            }
        } else {
            ends_with_fallback(&mut tx, &writes).await?
        };
        for (result, (reply, span)) in results.into_iter().zip(replies) {
            any_stands |= result.as_ref().is_ok_and(|ended| !ended.already_ended);
            answers.push(answer_after_commit(result, reply));
            spans.push(span);
        }
        let written = started.elapsed();
        let committed = if any_stands {
            tx.commit().await.map_err(|error| StoreError::from(error).to_string())
        } else {
            // Nothing to keep (all failed, or only reads and no-ops).
            tx.rollback().await.map_err(|error| StoreError::from(error).to_string())
        };
        // Logged once per write, in its caller's span (its request id).
        let (size, total) = (answers.len(), started.elapsed());
        for (answer, span) in answers.drain(..).zip(spans.drain(..)) {
            span.in_scope(|| {
                tracing::debug!(
                    size,
                    written_us = written.as_micros() as u64,
                    total_us = total.as_micros() as u64,
                    committed = committed.is_ok(),
                    "write group committed"
                )
            });
            answer(committed.clone());
        }
        Ok(())
    }
    .await;
    if let Err(error) = outcome {
        tracing::warn!(%error, "a write group failed before its commit; its writes were not stored");
    }
}

/// A group of ends only, through the backend's own runner.
async fn run_elsewhere(runner: &dyn EndsRunner, group: Vec<Job>) {
    let size = group.len();
    metrics::histogram!("verdict_write_group_size").record(size as f64);
    let (writes, replies): (Vec<EndWrite>, Vec<_>) = group
        .into_iter()
        .filter_map(|job| match job {
            Job::End(write, reply, span) => Some((*write, (reply, span))),
            Job::Write(..) => None,
        })
        .unzip();
    let answers = runner
        .run(writes)
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("the writer stopped".into())));
    match answers {
        Ok(answers) => {
            for (answer, (reply, span)) in answers.into_iter().zip(replies) {
                span.in_scope(|| log_answered(answer.is_ok(), size));
                let _ = reply.send(answer);
            }
        }
        Err(error) => {
            tracing::warn!(%error, "a write group failed; its writes were not stored");
            for (reply, span) in replies {
                span.in_scope(|| log_answered(false, size));
                let _ = reply.send(Err(StoreError::Unavailable(error.to_string())));
            }
        }
    }
}

/// A group-of-ends write's line, in its caller's span.
fn log_answered(stored: bool, size: usize) {
    tracing::debug!(size, committed = stored, "write group committed");
}

/// How a write's caller is answered once its group's commit is known: its
/// own result, or, when the commit failed, why (nothing of it is stored).
fn answer_after_commit<T: Send + 'static>(
    result: Result<T, StoreError>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
) -> Answer {
    Box::new(move |committed| {
        let result = match committed {
            Ok(()) => result,
            Err(why) => result.and(Err(StoreError::Unavailable(why))),
        };
        let _ = reply.send(result);
    })
}

/// Runs one write in a savepoint of its own, rolled back if it fails.
async fn in_savepoint(tx: &mut DbConnection, job: WriteJob) -> Result<Done, StoreError> {
    sqlx::raw_sql("SAVEPOINT grouped_write").execute(&mut *tx).await?;
    let (stands, answer) = job(&mut *tx).await;
    let close = if stands {
        "RELEASE SAVEPOINT grouped_write"
    } else {
        "ROLLBACK TO SAVEPOINT grouped_write; RELEASE SAVEPOINT grouped_write"
    };
    sqlx::raw_sql(close).execute(&mut *tx).await?;
    Ok((stands, answer))
}

/// The group's ends set-wise in a savepoint; if a statement fails, each
/// end again alone in a savepoint of its own, so that the others stand.
async fn ends_with_fallback(
    tx: &mut DbConnection,
    writes: &[EndWrite],
) -> Result<Vec<Result<Ended, StoreError>>, StoreError> {
    sqlx::raw_sql("SAVEPOINT grouped_ends").execute(&mut *tx).await?;
    match end_group(&mut *tx, writes).await {
        Ok(results) => {
            sqlx::raw_sql("RELEASE SAVEPOINT grouped_ends").execute(&mut *tx).await?;
            return Ok(results);
        }
        Err(error) => {
            tracing::warn!(%error, ends = writes.len(), "a set-wise end failed; ending one at a time");
            sqlx::raw_sql("ROLLBACK TO SAVEPOINT grouped_ends; RELEASE SAVEPOINT grouped_ends")
                .execute(&mut *tx)
                .await?;
        }
    }
    one_at_a_time(tx, writes).await
}

/// Each end alone, in a savepoint of its own.
async fn one_at_a_time(
    tx: &mut DbConnection,
    writes: &[EndWrite],
) -> Result<Vec<Result<Ended, StoreError>>, StoreError> {
    let mut results = Vec::with_capacity(writes.len());
    for write in writes {
        sqlx::raw_sql("SAVEPOINT grouped_end").execute(&mut *tx).await?;
        let result = match end_group(&mut *tx, std::slice::from_ref(write)).await {
            Ok(mut one) => one.pop().unwrap_or_else(|| Err(lost())),
            Err(error) => Err(error),
        };
        let close = if result.is_ok() {
            "RELEASE SAVEPOINT grouped_end"
        } else {
            "ROLLBACK TO SAVEPOINT grouped_end; RELEASE SAVEPOINT grouped_end"
        };
        sqlx::raw_sql(close).execute(&mut *tx).await?;
        results.push(result);
    }
    Ok(results)
}

fn lost() -> StoreError {
    StoreError::Internal("an end was planned without an answer".into())
}
