//! The auth webhook's answers, kept for `cache_ttl` so a client that
//! reconnects is not a webhook call each time, and bounded by
//! `cache_entries` however many different clients ask.
//!
//! Owns only the keeping: a full cache evicts the entries least likely to
//! be asked for again (moka's TinyLFU), never all of them at once, and
//! concurrent checks of the same key wait for one webhook call instead of
//! each making their own. What a key is made of and what the webhook says
//! are the webhook module's; an answer that is a failure to decide is
//! never kept (fail closed, ask again next time).

use std::future::Future;
use std::time::Duration;

use moka::future::Cache;

use super::{Access, Refusal};

/// What an answer is filed under: a fixed-size digest of the request, so
/// an entry costs 32 bytes of key however long the token and params were.
pub(super) type CacheKey = [u8; 32];

/// moka refuses a TTL over 1000 years; a longer one means the same.
const LONGEST_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Webhook answers by request, with a TTL and a bound on their number.
pub(super) struct AnswerCache {
    answers: Cache<CacheKey, Result<Access, Refusal>>,
}

impl AnswerCache {
    /// Keeps answers for `ttl`, at most `max_entries` of them.
    pub(super) fn new(ttl: Duration, max_entries: usize) -> Self {
        let answers = Cache::builder()
            .max_capacity(u64::try_from(max_entries).unwrap_or(u64::MAX))
            .time_to_live(ttl.min(LONGEST_TTL))
            .build();
        Self { answers }
    }

    /// The kept answer for `key`, or `ask`'s. Concurrent callers with the
    /// same key share one `ask`; an [`Refusal::Unavailable`] answer reaches
    /// every one of them and is not kept.
    pub(super) async fn get_or_ask(
        &self,
        key: CacheKey,
        ask: impl Future<Output = Result<Access, Refusal>>,
    ) -> Result<Access, Refusal> {
        let kept = self
            .answers
            .try_get_with(key, async {
                match ask.await {
                    Err(Refusal::Unavailable(why)) => Err(why),
                    answer => Ok(answer),
                }
            })
            .await;
        kept.unwrap_or_else(|why| Err(Refusal::Unavailable(why.as_ref().clone())))
    }

    /// Keeps `answer` for `key` in place of what was kept; a failure to
    /// decide changes nothing (never kept, as for a first ask).
    pub(super) async fn keep(&self, key: CacheKey, answer: &Result<Access, Refusal>) {
        if !matches!(answer, Err(Refusal::Unavailable(_))) {
            self.answers.insert(key, answer.clone()).await;
        }
    }

    /// Drops the answer kept for `key`.
    pub(super) async fn forget(&self, key: &CacheKey) {
        self.answers.invalidate(key).await;
    }

    /// Answers kept now, after pending evictions are done.
    #[cfg(test)]
    pub(super) async fn len(&self) -> u64 {
        self.answers.run_pending_tasks().await;
        self.answers.entry_count()
    }
}
