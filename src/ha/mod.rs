//! High availability of the scheduler: the election, Airflow's metadata database, the running-generation record, fenced supervision, the failover controller.
//!
//! - [`election`]: leader election with fencing epochs on the store alone;
//! - [`metadb`]: Airflow's metadata database: its connection (dagfs config, Airflow's), a pool;
//! - [`running`]: the generation the running scheduler unit serves, recorded in the metadata database;
//! - [`supervise`]: running the scheduler's commands fenced, in their own process groups;
//! - [`failover`]: the `dagfs failover` controller (election, identity gate, supervision);

pub mod election;
pub mod failover;
pub mod metadb;
pub mod running;
pub mod supervise;
