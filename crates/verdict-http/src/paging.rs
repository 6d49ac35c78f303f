//! Paging of lists: `?after=&limit=` in, `next_cursor` out.

use serde::Deserialize;

use crate::problem::ApiError;

/// Items of a page when the caller names no `limit`.
pub const PAGE_DEFAULT: i64 = 100;

/// `?after=&limit=`, as every paged list takes them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
    /// 1 to [`verdict_store::PAGE_LIMIT_MAX`]; [`PAGE_DEFAULT`] when absent.
    pub limit: Option<i64>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(PAGE_DEFAULT),
            Some(limit) if (1..=verdict_store::PAGE_LIMIT_MAX).contains(&limit) => Ok(limit),
            Some(_) => Err(ApiError::Unprocessable(format!(
                "limit must be between 1 and {}",
                verdict_store::PAGE_LIMIT_MAX
            ))),
        }
    }

    /// `after` as a sequence number (a cursor that is a non-negative integer).
    pub fn after_sequence(&self) -> Result<Option<i64>, ApiError> {
        match self.after.as_deref() {
            None => Ok(None),
            Some(text) => text.parse::<i64>().ok().filter(|n| *n >= 0).map(Some).ok_or_else(|| {
                ApiError::Unprocessable("after must be a cursor returned as next_cursor".into())
            }),
        }
    }
}

/// The cursor of the page after `items` when it is full (`None` on the last).
pub fn next_cursor<T>(items: &[T], limit: i64, cursor: impl Fn(&T) -> String) -> Option<String> {
    (items.len() as i64 == limit).then(|| items.last().map(cursor)).flatten()
}
