//! Settling deliveries on the consume channel, with acknowledgements batched.
//!
//! Every ack is a frame the broker's channel and queue processes handle one by one, and a
//! wake-up of lapin's I/O thread on our side. Jobs that finish close together (the same turn of
//! the runtime) are acknowledged with one `basic.ack` (`multiple`) for the longest run of
//! finished deliveries at the head of what this channel holds; a finished delivery behind one
//! still running is acknowledged on its own, so a long job never holds the prefetch window.
//! Nothing is acknowledged before its job's outcome is stored: a delivery is only marked as
//! finished once it is.
//!
//! Nacks and rejects (rare) go out at once, in order with the acks: a `multiple` ack must never
//! reach the broker before the nack of a tag it covers, or the broker would take the nack for
//! an unknown tag and close the channel.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::DeliveryTag;
use lapin::Channel;

/// The acknowledgements of one channel (delivery tags are per channel).
#[derive(Clone)]
pub struct Acks {
    inner: Arc<Inner>,
}

struct Inner {
    channel: Channel,
    state: Mutex<State>,
    /// Held while frames are sent, so that they leave in the order the state was changed.
    sending: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// Deliveries received and not yet settled: tag → finished (ack pending).
    outstanding: BTreeMap<DeliveryTag, bool>,
    /// Whether a flush is scheduled.
    scheduled: bool,
}

/// What one flush sends: a `multiple` ack up to a tag, then single acks.
#[derive(Debug, Default, PartialEq, Eq)]
struct Batch {
    up_to: Option<DeliveryTag>,
    singles: Vec<DeliveryTag>,
}

impl State {
    /// Takes the finished deliveries out: the run of finished ones at the head (acked up to
    /// its last tag with `multiple`) and the finished ones behind an unfinished one (acked
    /// singly, since `multiple` would cover the unfinished one too).
    fn take_finished(&mut self) -> Batch {
        let mut batch = Batch::default();
        let mut at_head = true;
        for (&tag, &finished) in &self.outstanding {
            match (finished, at_head) {
                (true, true) => batch.up_to = Some(tag),
                (true, false) => batch.singles.push(tag),
                (false, _) => at_head = false,
            }
        }
        if let Some(up_to) = batch.up_to {
            self.outstanding = self.outstanding.split_off(&(up_to + 1));
        }
        for tag in &batch.singles {
            self.outstanding.remove(tag);
        }
        batch
    }
}

impl Acks {
    pub fn new(channel: Channel) -> Acks {
        Acks {
            inner: Arc::new(Inner {
                channel,
                state: Mutex::new(State::default()),
                sending: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-changed in a way that
        // matters more than losing the process would; keep going with what is there.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a delivery as it arrives, before its job runs.
    pub fn received(&self, tag: DeliveryTag) {
        self.state().outstanding.insert(tag, false);
    }

    /// Acknowledges `tag` with the next flush, which runs as soon as the tasks ready now have
    /// had their turn (so acks of jobs finishing together leave as one frame).
    pub fn ack(&self, tag: DeliveryTag) {
        let schedule = {
            let mut state = self.state();
            if let Some(finished) = state.outstanding.get_mut(&tag) {
                *finished = true;
            }
            !std::mem::replace(&mut state.scheduled, true)
        };
        if schedule {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.flush().await {
                    // The channel is gone: the broker redelivers these messages, and a job
                    // that already reached a terminal state is then acknowledged unrun.
                    tracing::warn!(error = %e, "could not acknowledge deliveries");
                }
            });
        }
    }

    /// Sends the pending acknowledgements now.
    pub async fn flush(&self) -> Result<(), lapin::Error> {
        let _sending = self.inner.sending.lock().await;
        let batch = {
            let mut state = self.state();
            state.scheduled = false;
            state.take_finished()
        };
        let channel = &self.inner.channel;
        if let Some(up_to) = batch.up_to {
            channel
                .basic_ack(up_to, BasicAckOptions { multiple: true })
                .await?;
        }
        for tag in batch.singles {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: false })
                .await?;
        }
        Ok(())
    }

    /// Returns `tag` to the queue (negative ack with requeue), at once.
    pub async fn requeue(&self, tag: DeliveryTag) -> Result<(), lapin::Error> {
        self.settle_now(tag, |channel| async move {
            channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await
        })
        .await
    }

    /// Rejects `tag` without requeue (the work queue dead-letters it), at once.
    pub async fn reject(&self, tag: DeliveryTag) -> Result<(), lapin::Error> {
        self.settle_now(tag, |channel| async move {
            channel
                .basic_reject(tag, BasicRejectOptions { requeue: false })
                .await
        })
        .await
    }

    async fn settle_now<F, Fut>(&self, tag: DeliveryTag, send: F) -> Result<(), lapin::Error>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<(), lapin::Error>>,
    {
        let _sending = self.inner.sending.lock().await;
        // Still outstanding (and unfinished) until the frame is on its way, so no `multiple`
        // ack covers it first.
        let result = send(self.inner.channel.clone()).await;
        self.state().outstanding.remove(&tag);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(entries: &[(DeliveryTag, bool)]) -> State {
        State {
            outstanding: entries.iter().copied().collect(),
            scheduled: false,
        }
    }

    #[test]
    fn the_finished_run_at_the_head_is_one_multiple_ack() {
        let mut s = state(&[(1, true), (2, true), (3, true), (4, false), (5, false)]);
        assert_eq!(
            s.take_finished(),
            Batch {
                up_to: Some(3),
                singles: vec![]
            }
        );
        assert_eq!(s.outstanding.keys().copied().collect::<Vec<_>>(), [4, 5]);
    }

    #[test]
    fn finished_deliveries_behind_a_running_one_are_acked_singly() {
        let mut s = state(&[(4, false), (5, true), (6, false), (7, true)]);
        assert_eq!(
            s.take_finished(),
            Batch {
                up_to: None,
                singles: vec![5, 7]
            }
        );
        assert_eq!(s.outstanding.keys().copied().collect::<Vec<_>>(), [4, 6]);
        // Once the head finishes, it goes alone (6 is still running).
        s.outstanding.insert(4, true);
        assert_eq!(
            s.take_finished(),
            Batch {
                up_to: Some(4),
                singles: vec![]
            }
        );
    }

    #[test]
    fn nothing_finished_sends_nothing() {
        let mut s = state(&[(9, false)]);
        assert_eq!(s.take_finished(), Batch::default());
        assert_eq!(state(&[]).take_finished(), Batch::default());
        assert_eq!(s.outstanding.len(), 1);
    }
}
