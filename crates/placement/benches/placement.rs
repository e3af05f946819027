//! Time per placement decision: apps of 10, 100 and 1,000 instances (3 regions, mixed loads),
//! and the same decision behind a lookup among 10, 1,000 and 100,000 apps (the cost should
//! stay flat as a node carries more apps; `lookup_only` is the same lookup without placement,
//! to tell the two apart). Medians: `target/criterion/*/new/estimates.json`;
//! how to run: `docs/placement.md`.

use std::collections::HashMap;
use std::hint::black_box;

use anyedge_placement::{place, Candidate, Constraints};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// `n` instances spread over 3 regions (1, 30 and 80 ms away), loads from idle to at the hard
/// limit, one in 10 backing off, one in 20 unhealthy.
fn fleet(rng: &mut SmallRng, n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| {
            let region = (i % 3) as u32;
            Candidate {
                region,
                distance_us: [1_000, 30_000, 80_000][region as usize] + rng.gen_range(0..500),
                inflight: rng.gen_range(0..=12),
                soft_limit: 8,
                hard_limit: 12,
                healthy: !rng.gen_bool(0.05),
                backing_off: rng.gen_bool(0.1),
                excluded: false,
            }
        })
        .collect()
}

fn by_fleet_size(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(1);
    let mut group = c.benchmark_group("place");
    for n in [10, 100, 1_000] {
        let cands = fleet(&mut rng, n);
        let cons = Constraints::default();
        group.bench_with_input(BenchmarkId::new("instances", n), &cands, |b, cands| {
            b.iter(|| place(black_box(cands), black_box(&cons), &mut rng))
        });
    }
    group.finish();
}

/// `apps` apps of 10 instances each, by name, and the names.
type Table = (Vec<String>, HashMap<String, Vec<Candidate>>);

fn table(rng: &mut SmallRng, apps: usize) -> Table {
    let names: Vec<String> = (0..apps).map(|i| format!("app-{i:06}.example")).collect();
    let table = names
        .iter()
        .map(|name| (name.clone(), fleet(rng, 10)))
        .collect();
    (names, table)
}

fn by_app_count(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(2);
    let tables: Vec<(usize, Table)> = [10, 1_000, 100_000]
        .into_iter()
        .map(|apps| (apps, table(&mut rng, apps)))
        .collect();
    let cons = Constraints::default();
    let mut group = c.benchmark_group("lookup_and_place");
    for (apps, (names, table)) in &tables {
        group.bench_function(BenchmarkId::new("apps", apps), |b| {
            b.iter(|| {
                let name = names[rng.gen_range(0..names.len())].as_str();
                let cands = table.get(black_box(name)).map_or(&[][..], Vec::as_slice);
                place(cands, black_box(&cons), &mut rng)
            })
        });
    }
    group.finish();
    // Control: the same lookup without `place`, to tell the table's cost (cache misses once it
    // outgrows the caches) from placement's.
    let mut group = c.benchmark_group("lookup_only");
    for (apps, (names, table)) in &tables {
        group.bench_function(BenchmarkId::new("apps", apps), |b| {
            b.iter(|| {
                let name = names[rng.gen_range(0..names.len())].as_str();
                table.get(black_box(name)).map_or(0, Vec::len)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, by_fleet_size, by_app_count);
criterion_main!(benches);
