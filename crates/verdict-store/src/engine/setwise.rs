//! Set-wise statements: the rows a group writes to one table, bound as one
//! statement. A statement reads its rows as the common table `u` (`WITH
//! u(columns) AS (…)`), whose source is the backend's (`dialect::push_rows`:
//! a `VALUES` list on SQLite, `UNNEST` of one array a column on PostgreSQL,
//! so that its text does not change with the group's size and stays
//! prepared).

use sqlx::QueryBuilder;

use super::dialect::{Db, push_rows};

/// One column's values, a row each.
pub(crate) enum Values {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
}

/// Rows to bind, column by column.
#[derive(Default)]
pub(crate) struct Rows {
    names: Vec<&'static str>,
    columns: Vec<Values>,
    len: usize,
}

impl Rows {
    pub(crate) fn text(self, name: &'static str, values: Vec<Option<String>>) -> Rows {
        self.push(name, values.len(), Values::Text(values))
    }

    pub(crate) fn int(self, name: &'static str, values: Vec<Option<i64>>) -> Rows {
        self.push(name, values.len(), Values::Int(values))
    }

    fn push(mut self, name: &'static str, len: usize, values: Values) -> Rows {
        debug_assert!(self.columns.is_empty() || self.len == len, "columns of one length");
        self.len = len;
        self.names.push(name);
        self.columns.push(values);
        self
    }

    /// The column names, their values and the number of rows (for a
    /// backend that binds them itself: SQLite's writer thread).
    #[allow(dead_code)]
    pub(crate) fn into_parts(self) -> (Vec<&'static str>, Vec<Values>, usize) {
        (self.names, self.columns, self.len)
    }

    /// `WITH u(<names>) AS (<rows>) ` followed by `body`, which reads `u`.
    pub(super) fn statement(self, body: &str) -> QueryBuilder<Db> {
        let mut query = QueryBuilder::new("");
        self.push_statement(&mut query, body);
        query
    }

    /// Pushes `WITH u(<names>) AS (<rows>) <body>` onto `query`.
    pub(super) fn push_statement(self, query: &mut QueryBuilder<Db>, body: &str) {
        query.push("WITH u(");
        query.push(self.names.join(", "));
        query.push(") AS (");
        push_rows(query, self.columns, self.len);
        query.push(") ");
        query.push(body);
    }
}

/// Text values from an iterator of anything string-like.
pub(super) fn texts<S: Into<String>>(values: impl IntoIterator<Item = S>) -> Vec<Option<String>> {
    values.into_iter().map(|value| Some(value.into())).collect()
}

/// Integer values.
pub(super) fn ints(values: impl IntoIterator<Item = i64>) -> Vec<Option<i64>> {
    values.into_iter().map(Some).collect()
}
