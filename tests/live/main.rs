//! End-to-end tests against real `redis-server` processes on loopback ports.
//!
//! One test binary (so it links once); the modules group the behaviours.

mod acl;
mod alerting;
mod chaos;
mod compat;
mod dashboards;
mod exposition;
mod faults;
mod hostile;
mod keyspace;
mod process;
mod redis6;
mod reload;
mod secrets;
mod sentinel;
mod support;
mod tls;
mod topology;
mod watch;
mod web;
