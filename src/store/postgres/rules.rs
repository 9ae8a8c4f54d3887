//! `RuleStore` on PostgreSQL: agents, filters, routes and the rest kept by kind and id; a
//! change is announced to the other nodes.

use async_trait::async_trait;

use super::PgStore;
use crate::store::{PutMode, PutOutcome, Result, RuleKind, RuleStore, StoredRule};

#[async_trait]
impl RuleStore for PgStore {
    async fn list_rules(&self, kind: RuleKind) -> Result<Vec<StoredRule>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached("SELECT id, body FROM rules WHERE kind = $1 ORDER BY id")
            .await?;
        Ok(c.query(&stmt, &[&kind.as_str()])
            .await?
            .iter()
            .map(|r| StoredRule {
                id: r.get(0),
                body: r.get(1),
            })
            .collect())
    }

    async fn put_rule(
        &self,
        kind: RuleKind,
        rule: StoredRule,
        mode: PutMode,
    ) -> Result<PutOutcome> {
        let now = crate::clock::now_ms();
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let outcome = match mode {
            PutMode::Create => {
                let created = tx
                    .query_opt(
                        "INSERT INTO rules (kind, id, body, updated_at) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (kind, id) DO NOTHING RETURNING 1",
                        &[&kind.as_str(), &rule.id, &rule.body, &now],
                    )
                    .await?;
                if created.is_some() {
                    PutOutcome::Created
                } else {
                    PutOutcome::Exists
                }
            }
            PutMode::Upsert => {
                // `xmax = 0`: the row is new in this transaction (inserted, not updated).
                let row = tx
                    .query_one(
                        "INSERT INTO rules (kind, id, body, updated_at) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (kind, id) DO UPDATE
                             SET body = excluded.body, updated_at = excluded.updated_at
                         RETURNING (xmax = 0)",
                        &[&kind.as_str(), &rule.id, &rule.body, &now],
                    )
                    .await?;
                if row.get::<_, bool>(0) {
                    PutOutcome::Created
                } else {
                    PutOutcome::Replaced
                }
            }
        };
        // Every node reloads its rules when this commits (bookkeeping rows are never served).
        if outcome != PutOutcome::Exists && kind != RuleKind::Meta {
            Self::notify_rules(&tx, self.node).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn delete_rule(&self, kind: RuleKind, id: String) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "DELETE FROM rules WHERE kind = $1 AND id = $2",
                &[&kind.as_str(), &id],
            )
            .await?;
        if n > 0 && kind != RuleKind::Meta {
            Self::notify_rules(&tx, self.node).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }
}
