//! Catalog stores: where a node's apps and instances come from besides its own file.
//!
//! The etcd store. Pure parts, testable without etcd: key layout ([`keys`]), lenient value
//! decoding and encoding ([`values`]), and the catalog's key/value state with the diff of two
//! listings and the assembly of a [`Config`](anyedge_config::Config) ([`state`]). The I/O parts
//! talk to etcd: the connection ([`client`]), paged listings and batched puts within etcd's
//! limits ([`pages`]), the listing and watch loop that feeds a node
//! ([`sync`]), the worker's registration under its lease ([`register`]) and the cluster's
//! ACME state ([`acme`]).
//!
//! Kept out of `anyedge-catalog`, which stays free of I/O (and of etcd-client's dependencies).

pub mod acme;
pub mod client;
#[doc(hidden)]
pub mod fuzz;
pub mod keys;
pub mod pages;
pub mod register;
pub mod state;
pub mod sync;
pub mod values;

pub use acme::EtcdCertStorage;
pub use client::{connect, StoreError};
pub use keys::{Key, Keys};
pub use register::Registration;
pub use state::{CatalogState, Change, Viewer};
pub use sync::{CatalogStatus, ConfigSource, EtcdCatalog};
