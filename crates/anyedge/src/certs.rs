//! `anyedge certs`: the ACME certificates of a node or of the cluster (`list`), the cluster
//! secret key (`secret-key`), and the cluster CA and node certificates for mutual TLS between
//! nodes (`cluster-ca`, `node`).

mod cluster;
mod list;

pub use list::{list, rows, Row};

use crate::cli::{CertsArgs, CertsCommand};
use std::process::ExitCode;

pub fn run(args: &CertsArgs) -> ExitCode {
    match &args.command {
        CertsCommand::List(list_args) => list(list_args),
        other => cluster::run(other),
    }
}
