//! End-to-end tests: each starts the real `churn` binary on a free port with a
//! temporary data directory and talks to it over real HTTP.

mod support;

mod alarms;
mod auth;
mod bodies;
mod control;
mod cron;
mod functions;
mod fuzz;
mod limits;
mod object_deploy;
mod objects;
mod restart;
mod sockets;
