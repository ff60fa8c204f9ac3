//! Operator tools for the dead-letter queues, one per work queue (`<queue>.<type>.dead`): list
//! what is there and why, and replay messages into their work queues. Replaying resets the job
//! to `queued` (keeping its attempt count and last error for the record) so it runs again; a
//! job that meanwhile succeeded or was canceled is not run again and its dead letter is
//! dropped.
//!
//! Which queues: those named (`--queue jobs.render`, the work queue's name), or by default
//! those of the types this worker serves, and the dead letters of the single work queue of
//! older versions (`<queue>.dead`) if it is there. A replayed job goes to its type's queue.

use std::time::Duration;

use chrono::Utc;
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, ShortString};
use lapin::Connection;
use shared::publish::{publish_confirmed, Outgoing, PublishError};
use shared::{topology, JobId, JobMessage, JobStatus, Settings};

use crate::job_store::{JobStore, StoreError, Transition};

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    Connect(#[from] shared::amqp::ConnectError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One dead letter, as `list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// The work queue it was dead-lettered from (its dead-letter queue is `<queue>.dead`).
    pub queue: String,
    pub job_id: Option<String>,
    pub job_type: Option<String>,
    pub job_status: Option<String>,
    /// Why the broker dead-lettered it (`rejected`, `expired`, `delivery_limit`), if it did.
    pub reason: Option<String>,
    pub bytes: usize,
}

/// What `replay` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReplayReport {
    pub replayed: Vec<String>,
    /// Finished meanwhile (succeeded or canceled): dropped, not run again.
    pub dropped: Vec<String>,
    /// Not a job message, or no record of its job: left in the dead-letter queue.
    pub left: usize,
}

fn reason(delivery: &lapin::message::Delivery) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get("reason")? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// A connection to the broker, and the job store.
struct Session {
    store: JobStore,
    connection: Connection,
    channel: lapin::Channel,
    /// The work queues whose dead-letter queues exist, of those asked for.
    queues: Vec<String>,
}

impl Session {
    async fn open(
        settings: &Settings,
        queues: &[String],
        confirms: bool,
    ) -> Result<Session, DeadLetterError> {
        let store = JobStore::new(&settings.redis, &settings.jobs, "dead-letter-tool".into())?;
        let (connection, _) = shared::amqp::Nodes::new(&settings.amqp).connect().await?;
        // Only queues that are there: asking for a missing one closes the asking channel.
        let mut present = Vec::new();
        for queue in queues {
            let dead = topology::dead_letter_queue(queue);
            if topology::inspect(&connection, &dead).await?.is_some() {
                present.push(queue.clone());
            }
        }
        let channel = connection.create_channel().await?;
        if confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
        }
        Ok(Session {
            store,
            connection,
            channel,
            queues: present,
        })
    }

    /// The next dead letter of `queue`, left unacknowledged (closing the channel returns it).
    async fn next(&self, queue: &str) -> Result<Option<lapin::message::Delivery>, DeadLetterError> {
        let message = self
            .channel
            .basic_get(
                ShortString::from(topology::dead_letter_queue(queue)),
                BasicGetOptions { no_ack: false },
            )
            .await?;
        Ok(message.map(|m| m.delivery))
    }

    async fn close(self, why: &str) {
        let _ = self.connection.close(200, ShortString::from(why)).await;
    }
}

/// Looks at up to `limit` dead letters of the work queues `queues` without removing them.
pub async fn list(
    settings: &Settings,
    queues: &[String],
    limit: usize,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let session = Session::open(settings, queues, false).await?;
    let mut letters = Vec::new();
    // Messages taken here stay unacknowledged until the channel closes, which returns them
    // all to the queue: listing removes nothing.
    for queue in &session.queues {
        while letters.len() < limit {
            let Some(delivery) = session.next(queue).await? else {
                break;
            };
            letters.push(session.describe(queue, &delivery).await?);
        }
    }
    session.close("listed").await;
    Ok(letters)
}

impl Session {
    async fn describe(
        &self,
        queue: &str,
        delivery: &lapin::message::Delivery,
    ) -> Result<DeadLetter, DeadLetterError> {
        let decoded: Option<JobMessage> = serde_json::from_slice(&delivery.data).ok();
        let job_status = match &decoded {
            Some(m) => self.store.load(&m.id).await?.map(|d| d.status.to_string()),
            None => None,
        };
        Ok(DeadLetter {
            queue: queue.to_owned(),
            job_id: decoded.as_ref().map(|m| m.id.to_string()),
            job_type: decoded.as_ref().map(|m| m.job_type.clone()),
            job_status,
            reason: reason(delivery),
            bytes: delivery.data.len(),
        })
    }
}

/// Moves up to `limit` dead letters of the work queues `queues` back into their types'
/// queues (`route` names a type's queue), resetting their jobs to queued.
pub async fn replay(
    settings: &Settings,
    queues: &[String],
    route: impl Fn(&str) -> String,
    limit: usize,
) -> Result<ReplayReport, DeadLetterError> {
    let session = Session::open(settings, queues, true).await?;
    let (store, channel) = (&session.store, &session.channel);
    let timeout = Duration::from_millis(settings.amqp.publish_timeout_ms);
    let mut report = ReplayReport::default();
    let mut seen = 0;
    for queue in &session.queues {
        while seen < limit {
            let Some(delivery) = session.next(queue).await? else {
                break;
            };
            seen += 1;
            let Ok(job) = serde_json::from_slice::<JobMessage>(&delivery.data) else {
                // Left unacknowledged: back in the dead-letter queue when the channel closes.
                report.left += 1;
                continue;
            };
            let Some(mut doc) = store.load(&job.id).await? else {
                report.left += 1;
                continue;
            };
            let id: JobId = job.id;
            doc.status = JobStatus::Queued;
            doc.started_at = None;
            doc.finished_at = None;
            doc.progress = None;
            doc.next_attempt_at = Some(Utc::now());
            let from = [JobStatus::Failed, JobStatus::Queued, JobStatus::Running];
            match store.transition(&doc, &from, None).await? {
                Transition::Done | Transition::DoneCancelRequested => {
                    let key = id.to_string();
                    let priority = delivery.properties.priority().unwrap_or(0);
                    let traceparent = shared::publish::traceparent_of(&delivery.properties);
                    let outgoing = Outgoing::new(&key, &delivery.data)
                        .priority(priority)
                        .traceparent(traceparent.as_deref());
                    publish_confirmed(channel, &route(&job.job_type), outgoing, timeout).await?;
                    report.replayed.push(id.to_string());
                }
                Transition::Refused(_) => report.dropped.push(id.to_string()),
            }
            delivery.ack(BasicAckOptions::default()).await?;
        }
    }
    session.close("replayed").await;
    Ok(report)
}
