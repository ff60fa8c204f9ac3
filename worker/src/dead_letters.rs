//! Operator tools for the dead-letter queue `<queue>.dead`: list what is there and why, and
//! replay messages into the work queue. Replaying resets the job to `queued` (keeping its
//! attempt count and last error for the record) so it runs again; a job that meanwhile
//! succeeded or was canceled is not run again and its dead letter is dropped.

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

/// A connection to the dead-letter queue (topology declared), and the job store.
struct Session {
    store: JobStore,
    connection: Connection,
    channel: lapin::Channel,
    queue: String,
}

impl Session {
    async fn open(settings: &Settings, confirms: bool) -> Result<Session, DeadLetterError> {
        let store = JobStore::new(&settings.redis, &settings.jobs, "dead-letter-tool".into())?;
        let (connection, _) = shared::amqp::Nodes::new(&settings.amqp).connect().await?;
        let channel = connection.create_channel().await?;
        if confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
        }
        topology::declare_work_queue(&channel, &settings.amqp).await?;
        Ok(Session {
            store,
            connection,
            channel,
            queue: topology::dead_letter_queue(&settings.amqp.queue),
        })
    }

    /// The next dead letter, left unacknowledged (closing the channel returns it).
    async fn next(&self) -> Result<Option<lapin::message::Delivery>, DeadLetterError> {
        let message = self
            .channel
            .basic_get(
                ShortString::from(self.queue.as_str()),
                BasicGetOptions { no_ack: false },
            )
            .await?;
        Ok(message.map(|m| m.delivery))
    }

    async fn close(self, why: &str) {
        let _ = self.connection.close(200, ShortString::from(why)).await;
    }
}

/// Looks at up to `limit` dead letters without removing them.
pub async fn list(settings: &Settings, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let session = Session::open(settings, false).await?;
    let mut letters = Vec::new();
    // Messages taken here stay unacknowledged until the channel closes, which returns them
    // all to the queue: listing removes nothing.
    while letters.len() < limit {
        let Some(delivery) = session.next().await? else {
            break;
        };
        let decoded: Option<JobMessage> = serde_json::from_slice(&delivery.data).ok();
        let job_status = match &decoded {
            Some(m) => session
                .store
                .load(&m.id)
                .await?
                .map(|d| d.status.to_string()),
            None => None,
        };
        letters.push(DeadLetter {
            job_id: decoded.as_ref().map(|m| m.id.to_string()),
            job_type: decoded.as_ref().map(|m| m.job_type.clone()),
            job_status,
            reason: reason(&delivery),
            bytes: delivery.data.len(),
        });
    }
    session.close("listed").await;
    Ok(letters)
}

/// Moves up to `limit` dead letters back into the work queue, resetting their jobs to queued.
pub async fn replay(settings: &Settings, limit: usize) -> Result<ReplayReport, DeadLetterError> {
    let session = Session::open(settings, true).await?;
    let (store, channel) = (&session.store, &session.channel);
    let timeout = Duration::from_millis(settings.amqp.publish_timeout_ms);
    let mut report = ReplayReport::default();
    let mut seen = 0;
    while seen < limit {
        let Some(delivery) = session.next().await? else {
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
                publish_confirmed(channel, &settings.amqp.queue, outgoing, timeout).await?;
                report.replayed.push(id.to_string());
            }
            Transition::Refused(_) => report.dropped.push(id.to_string()),
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    session.close("replayed").await;
    Ok(report)
}
