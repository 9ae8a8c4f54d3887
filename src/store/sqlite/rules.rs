//! `RuleStore` on SQLite: agents, filters, routes and the rest kept by kind and id.

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use crate::store::{PutMode, PutOutcome, Result, RuleKind, RuleStore, StoredRule};

#[async_trait]
impl RuleStore for SqliteStore {
    async fn list_rules(&self, kind: RuleKind) -> Result<Vec<StoredRule>> {
        self.read(move |c| {
            c.prepare_cached("SELECT id, body FROM rules WHERE kind = ?1 ORDER BY id")?
                .query_map([kind.as_str()], |r| {
                    Ok(StoredRule {
                        id: r.get(0)?,
                        body: r.get(1)?,
                    })
                })?
                .collect()
        })
        .await
    }

    async fn put_rule(
        &self,
        kind: RuleKind,
        rule: StoredRule,
        mode: PutMode,
    ) -> Result<PutOutcome> {
        self.write(move |c| {
            let exists = c
                .prepare_cached("SELECT 1 FROM rules WHERE kind = ?1 AND id = ?2")?
                .exists(params![kind.as_str(), rule.id])?;
            if exists && mode == PutMode::Create {
                return Ok(PutOutcome::Exists);
            }
            c.prepare_cached(
                "INSERT INTO rules (kind, id, body, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            )?
            .execute(params![kind.as_str(), rule.id, rule.body, crate::clock::now_ms()])?;
            Ok(if exists {
                PutOutcome::Replaced
            } else {
                PutOutcome::Created
            })
        })
        .await
    }

    async fn delete_rule(&self, kind: RuleKind, id: String) -> Result<bool> {
        self.write(move |c| {
            Ok(
                c.prepare_cached("DELETE FROM rules WHERE kind = ?1 AND id = ?2")?
                    .execute(params![kind.as_str(), id])?
                    > 0,
            )
        })
        .await
    }
}
