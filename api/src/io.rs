//! A small runtime of its own for the connections to Redis and RabbitMQ.
//!
//! actix-web runs each HTTP worker on a single-threaded runtime of its own, and both client
//! crates spawn their connection tasks on whatever runtime (re)connects them. A connection made
//! while serving a request would then live on that HTTP worker's runtime and die with it: at a
//! graceful shutdown, idle HTTP workers stop first and take the shared Redis connection with
//! them while busy ones are still draining. Running every Redis and broker operation here keeps
//! the connections alive as long as the process.

use std::future::Future;

use tokio::runtime::{Builder, Handle, Runtime};

#[derive(Debug, thiserror::Error)]
#[error("the I/O runtime stopped")]
pub struct IoStopped;

#[derive(Clone)]
pub struct Io {
    handle: Handle,
}

impl Io {
    /// Starts the runtime (its threads live until [`IoRuntime`] is dropped).
    pub fn start() -> std::io::Result<(Io, IoRuntime)> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("io")
            .enable_all()
            .build()?;
        let io = Io {
            handle: runtime.handle().clone(),
        };
        Ok((io, IoRuntime(Some(runtime))))
    }

    /// Runs `work` on the I/O runtime and waits for its result.
    pub async fn run<F, T>(&self, work: F) -> Result<T, IoStopped>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.handle.spawn(work).await.map_err(|_| IoStopped)
    }

    /// Starts `work` on the I/O runtime without waiting for it.
    pub fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(work);
    }
}

/// Owns the I/O runtime; dropping it stops the runtime's threads.
pub struct IoRuntime(Option<Runtime>);

impl Drop for IoRuntime {
    fn drop(&mut self) {
        // May be dropped inside another runtime (at the end of main): don't block there.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
