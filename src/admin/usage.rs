//! A tenant's usage (`/admin/v1/tenants/{tenant}/usage`): real counters
//! (requests today, projects, users, this month's spend per project) and
//! utilisation against the tier's limits.

use serde_json::{Value, json};

use super::error::ApiError;
use super::ops::{AdminOps, store_error};
use crate::store::{Counter, UsageKey};
use crate::usage;

impl AdminOps {
    /// Real counters and utilisation against the tier's limits.
    pub async fn usage(&self, tenant_id: &str) -> Result<Value, ApiError> {
        let t = self.tenant(tenant_id).await?;
        let day = usage::today();
        // What every replica counted (the store, plus this replica's
        // unflushed counts), not this replica's cached value: with a
        // shared store the others count too.
        let counter = |counter| UsageKey {
            tenant_id: tenant_id.into(),
            counter,
        };
        let requests = self
            .usage
            .durable(&counter(Counter::Requests { day }))
            .await
            .map_err(store_error)?;
        let projects = self
            .store
            .list_projects(tenant_id)
            .await
            .map_err(store_error)?;
        let month = usage::this_month();
        let spend = self
            .usage
            .durable(&counter(Counter::Spend {
                month,
                project: None,
            }))
            .await
            .map_err(store_error)?;
        let mut project_spend = serde_json::Map::new();
        for p in &projects {
            let spent = self
                .usage
                .durable(&counter(Counter::Spend {
                    month,
                    project: Some(p.project_id.as_str().into()),
                }))
                .await
                .map_err(store_error)?;
            project_spend.insert(
                p.project_id.clone(),
                json!({
                    "name": p.name,
                    "spend_usd": usage::usd(spent),
                    "budget_usd": p.budget,
                    "utilization": pct_of(spent, usage::limit_micros(p.budget)),
                }),
            );
        }
        let projects = projects.len() as u64;
        let users = self
            .store
            .list_users(tenant_id)
            .await
            .map_err(store_error)?
            .len() as u64;
        let pct = |used: u64, max: i64| pct_of(used, u64::try_from(max).ok());
        let date = usage::day_name(day);
        Ok(json!({
            "tenant_id": t.tenant_id,
            "organization": t.organization_name,
            "tier": t.tier,
            "date": date,
            "requests_today": requests,
            "projects": projects,
            "users": users,
            "month": usage::month_name(month),
            "spend_usd": usage::usd(spend),
            "project_spend": project_spend,
            "limits": t.limits,
            "utilization": {
                "requests": pct(requests, t.limits.max_requests_per_day),
                "projects": pct(projects, t.limits.max_projects),
                "users": pct(users, t.limits.max_users),
                "cost": pct_of(spend, usage::limit_micros(t.limits.max_monthly_cost)),
            }
        }))
    }
}

/// `used` as a percentage of `limit` (two decimals); `null` when unlimited.
fn pct_of(used: u64, limit: Option<u64>) -> Value {
    match limit {
        None => Value::Null,
        Some(0) => json!(if used == 0 { 0.0 } else { 100.0 }),
        Some(max) => json!(((used as f64 / max as f64) * 10_000.0).round() / 100.0),
    }
}
