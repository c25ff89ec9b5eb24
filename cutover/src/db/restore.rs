//! `cutover rollback`'s undo of a promotion: the source becomes the writable primary again,
//! with the replica replicating from it, whatever state the pair was left in.
//!
//! It decides from what the servers say, not from how far the run thinks it got (a run
//! killed during `promote` leaves any state between "nothing happened" and "promoted"):
//!
//! - the replica still replicates: the promotion never switched. The source is unfenced
//!   (a fence lock died with the killed session; `read_only` stays) and the replica is made
//!   read-only and replicating again;
//! - the replica is a primary and the old source replicates from it (`--reverse` ran): a
//!   promotion in the other direction, with the same zero-loss fence, so the writes the new
//!   primary took come back, and `--reverse` so the destination replicates again;
//! - the replica is a primary and the old source does not replicate from it (a run killed
//!   between the switch and `--reverse`): switched back only when the new primary holds no
//!   transaction the old source lacks; otherwise [`DbError::Refused`], because going back would
//!   lose them.

use super::position;
use super::promote::{self, PromoteOutcome};
use super::{DbError, Server, connect_pair, source_address};
use crate::runbook::Database;

/// What [`restore`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    /// One line per action.
    pub done: Vec<String>,
    /// The write-unavailable window of a reverse promotion, in milliseconds.
    pub write_unavailable_ms: Option<u64>,
}

/// The same pair with the roles swapped: the destination as the source.
pub fn swapped(db: &Database) -> Database {
    let mut s = db.clone();
    std::mem::swap(&mut s.source, &mut s.replica);
    std::mem::swap(&mut s.source_password, &mut s.replica_password);
    std::mem::swap(
        &mut s.source_address_for_replica,
        &mut s.replica_address_for_source,
    );
    s
}

async fn unfence(source: &mut Server) -> Result<String, DbError> {
    if source.global_bool("read_only").await? {
        for sql in source.dialect.unfence() {
            source.exec(sql).await?;
        }
        Ok(format!(
            "source {} writable again (read_only=0)",
            source.addr
        ))
    } else {
        Ok(format!("source {} was writable", source.addr))
    }
}

/// Makes the source the writable primary again; see the module doc.
pub async fn restore(db: &Database) -> Result<RestoreReport, DbError> {
    let (mut source, mut replica) = connect_pair(db).await?;
    let addr = source_address(db, &source);
    if replica.replica_status().await?.is_some() {
        let mut done = vec![unfence(&mut source).await?];
        done.push(promote::reattach_replica(&mut replica, db, &addr).await?);
        source.close().await;
        replica.close().await;
        return Ok(RestoreReport {
            done,
            write_unavailable_ms: None,
        });
    }
    if source.replica_status().await?.is_some() {
        source.close().await;
        replica.close().await;
        let back = promote::promote(&swapped(db), true).await?;
        return match back.outcome {
            PromoteOutcome::Promoted {
                write_unavailable_ms,
                reverse,
                ..
            } if back.ok => Ok(RestoreReport {
                done: vec![
                    format!(
                        "switched back to the source ({write_unavailable_ms} ms without writes)"
                    ),
                    reverse.unwrap_or_default(),
                ],
                write_unavailable_ms: Some(write_unavailable_ms),
            }),
            PromoteOutcome::Promoted { reverse_failed, .. } => Err(DbError::Refused {
                role: super::Role::Source,
                addr: source_addr_text(db),
                message: format!(
                    "switched back, but the destination does not replicate from it: {}",
                    reverse_failed.unwrap_or_default()
                ),
            }),
            PromoteOutcome::Refused { reason } | PromoteOutcome::Aborted { reason, .. } => {
                Err(DbError::Refused {
                    role: super::Role::Source,
                    addr: source_addr_text(db),
                    message: format!("the switch back did not happen: {reason}"),
                })
            }
        };
    }
    // Switched, no reverse replication: safe only if the new primary took no write.
    let (new, old) = (replica.own_position().await?, source.own_position().await?);
    let lacking =
        position::transactions_behind(&source.dialect, &new.to_string(), &old.to_string())
            .map_err(|e| replica.refused(e))?;
    if lacking > 0 {
        return Err(replica.refused(format!(
            "is the primary with {lacking} transaction(s) the old source lacks, and the old \
             source does not replicate from it: switching back would lose them"
        )));
    }
    for sql in replica.dialect.fence() {
        replica.exec(sql).await?;
    }
    let mut done = vec![format!(
        "destination {} read-only again (it took no write)",
        replica.addr
    )];
    done.push(promote::reattach_replica(&mut replica, db, &addr).await?);
    done.push(unfence(&mut source).await?);
    source.close().await;
    replica.close().await;
    Ok(RestoreReport {
        done,
        write_unavailable_ms: None,
    })
}

fn source_addr_text(db: &Database) -> String {
    db.source
        .rsplit_once('@')
        .map_or(db.source.as_str(), |(_, h)| h)
        .to_string()
}
