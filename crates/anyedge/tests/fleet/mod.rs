//! What the placement and replay tests share: a node in `ord` with three regions, HTTP apps of
//! scripted instances in given regions, and the answers as a client saw them.
#![allow(dead_code)] // each test binary uses its own part

use anyedge_test_support::scripted_instance::{metric, ScriptedInstance};
use std::net::SocketAddr;

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Node in `ord`; regions `ord`, `syd` and `ams` (no instance there) with coordinates.
pub const NODE: &str = "[node]\nregion = \"ord\"\n\n[regions.ord]\nlat = 41.98\nlon = -87.90\n\n[regions.syd]\nlat = -33.94\nlon = 151.18\n\n[regions.ams]\nlat = 52.31\nlon = 4.76\n\n";

/// An HTTP app on `port` (host `NAME.test`) with `extra` app keys and its instances, each in its region.
pub fn app(name: &str, port: u16, extra: &str, instances: &[(&ScriptedInstance, &str)]) -> String {
    let mut t = format!(
        "[[apps]]\nname = \"{name}\"\nhostnames = [\"{name}.test\"]\n{extra}\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
    );
    for (i, region) in instances {
        t += &format!(
            "  [[apps.instances]]\n  id = \"{}\"\n  region = \"{region}\"\n  address = \"{}\"\n",
            i.name, i.addr
        );
    }
    t
}

pub fn counter(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn instance(&self) -> &str {
        self.header("x-instance").unwrap_or("<none>")
    }
}
