//! Leased mode: tokens taken ahead from Redis and spent locally (the
//! bounds are in the parent module's docs).

use std::time::{Duration, Instant};

use super::memo::{self, Lease, Subject};
use super::{ALLOWED, Ask, Fail, Inner, QUOTA, RATE, allowed_status};
use crate::rate_limit::{RateStatus, ceil_secs};
use crate::usage;

impl Inner {
    pub(super) async fn leased(
        &self,
        ask: &Ask<'_>,
        now: Instant,
    ) -> Result<Option<RateStatus>, Fail> {
        let rate_subject = ask.rate.map(|r| Subject::Rate(ask.bucket.clone(), r));
        let quota_subject = (ask.max_per_day >= 0).then(|| Subject::Quota(ask.tenant.clone()));
        let budget_subject = ask
            .budget
            .map(|b| Subject::Budget(b.tenant.clone(), b.project.map(|(p, _)| p.clone())));
        let had_rate = rate_subject
            .as_ref()
            .is_none_or(|s| memo::take(&self.leases, s, now));
        let had_quota = quota_subject
            .as_ref()
            .is_none_or(|s| memo::take(&self.leases, s, now));
        let budget_fresh = budget_subject
            .as_ref()
            .is_none_or(|s| self.leases.get(s, now).is_some());
        if had_rate && had_quota && budget_fresh {
            self.count(ask, usage::today());
            return Ok(ask.rate.zip(rate_subject.as_ref()).map(|(rate, s)| {
                let left = self
                    .leases
                    .get(s, now)
                    .map_or(0, |l| l.left)
                    .min(u64::from(rate.burst.get())) as u32;
                RateStatus {
                    limit: rate.limit.get(),
                    remaining: left,
                    reset: ceil_secs(rate.interval() * (rate.burst.get() - left)),
                    window: rate.period.as_secs().max(1),
                    retry_after: None,
                }
            }));
        }
        let give_back = || {
            for (had, s) in [(had_rate, &rate_subject), (had_quota, &quota_subject)] {
                if let (true, Some(s)) = (had, s) {
                    memo::give_back(&self.leases, s);
                }
            }
        };
        // Leases spend first (a refusal remembered by one task must not
        // strand the tokens another task leased); then remembered refusals.
        if let Err(e) = self.remembered_counted(ask, now) {
            give_back();
            return Err(e);
        }
        let rate_want = if had_rate { 0 } else { self.lease_size };
        let quota_want = if had_quota { 0 } else { self.lease_size };
        let reply = match self.decide(ask, rate_want, quota_want).await {
            Ok(r) => r,
            Err(e) => {
                give_back();
                return Err(e);
            }
        };
        if reply.status != ALLOWED {
            give_back();
            // Concurrent misses each lease: tokens another task leased
            // while this one asked are this request's to spend.
            if matches!(reply.status, RATE | QUOTA)
                && self.take_all(&rate_subject, &quota_subject, now)
            {
                self.count(ask, reply.day);
                return Ok(ask.rate.map(|rate| allowed_status(rate, &reply)));
            }
            return Err(Fail::Refused(self.refused(ask, &reply, now)));
        }
        let expires = now + self.lease_ttl;
        if let Some(s) = rate_subject.filter(|_| rate_want > 0) {
            memo::add(
                &self.leases,
                s,
                reply.rate_granted.saturating_sub(1),
                expires,
                now,
            );
        }
        if let Some(s) = quota_subject.filter(|_| quota_want > 0) {
            let day_end = now + Duration::from_secs(reply.day_left);
            memo::add(
                &self.leases,
                s,
                reply.quota_granted.saturating_sub(1),
                expires.min(day_end),
                now,
            );
        }
        if let Some(s) = budget_subject {
            self.leases.insert(s, Lease { left: 0, expires }, now);
        }
        self.count(ask, reply.day);
        Ok(ask.rate.map(|rate| allowed_status(rate, &reply)))
    }

    /// Takes a token of each lease, or none.
    fn take_all(&self, rate: &Option<Subject>, quota: &Option<Subject>, now: Instant) -> bool {
        let rate_ok = rate
            .as_ref()
            .is_none_or(|s| memo::take(&self.leases, s, now));
        let quota_ok = quota
            .as_ref()
            .is_none_or(|s| memo::take(&self.leases, s, now));
        if rate_ok && quota_ok {
            return true;
        }
        if let (true, Some(s)) = (rate_ok, rate) {
            memo::give_back(&self.leases, s);
        }
        if let (true, Some(s)) = (quota_ok, quota) {
            memo::give_back(&self.leases, s);
        }
        false
    }
}
