//! Upgrading from the single work queue. Before queues per type, every job went to one queue,
//! `amqp.queue` (`jobs`), declared with priorities and dead-lettering into `<queue>.dead`, with
//! its delay queues `<queue>.retry.<ms>` expiring back into it. Jobs still waiting there when
//! the workers are upgraded (and those the facades of the old version publish there while a
//! rolling upgrade runs, or that come back from its delay queues) must not be lost.
//!
//! So every worker, at each connect, looks for that queue (a passive declare on a channel of
//! its own: asking for a missing queue closes the asking channel) and, if it is there,
//! consumes it beside its types' queues. A job found there runs at once if this worker serves
//! its type (its retries then go to the type's queue); otherwise it moves to its type's queue,
//! unchanged (`crate::handoff`). Its status document, written by the old version, is read as
//! any other. The old queue is left in place (old facades may still publish to it); once no
//! component of the old version runs, it and its delay queues can be deleted
//! (`rabbitmqctl delete_queue jobs`; see the README's "Upgrading").

use lapin::Connection;

/// Whether the single work queue of older versions, `queue`, exists (and how many messages
/// it holds).
pub async fn old_queue(connection: &Connection, queue: &str) -> lapin::Result<Option<u32>> {
    let stats = shared::topology::inspect(connection, queue).await?;
    Ok(stats.map(|q| q.messages))
}
