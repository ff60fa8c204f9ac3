//! Job types of your own, outside the service's crates: each module declares one
//! [`worker::JobType`], and each binary in `src/bin/` runs a worker serving it. A facade
//! learns the type when that worker starts (the fleet's job type registry) and accepts its
//! jobs from then on, unchanged and without a restart.

pub mod greet;
pub mod wordcount;
