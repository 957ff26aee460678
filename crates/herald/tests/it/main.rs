//! herald's black-box integration tests: one binary, a file per area.

mod support;

mod bad_input;
mod cli;
mod fanout;
mod jwt_keys;
mod lifecycle;
mod limits;
mod refusals;
mod tls;
