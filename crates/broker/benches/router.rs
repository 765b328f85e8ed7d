//! Subscription-tree benchmarks: matching a topic against 100 000 subscriptions, and adding
//! and removing a subscription in a tree of that size.
//!
//! The tree models a fleet: 100 sites × 1000 devices, each device subscribed to its own
//! command topic `site/<s>/dev/<d>/cmd` (100 000 exact filters), plus a few hundred wildcard
//! subscribers (per-site `site/<s>/+/+/cmd`, per-site `site/<s>/#`, and global `+/+/+/+/cmd`).
//! A publish to one device's topic therefore matches 1 exact filter and a handful of
//! wildcards, which is what a broker's router does most.
//!
//! Run with `cargo bench -p sagitta-broker --bench router`.

// Benchmark setup on constant, known-valid inputs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sagitta_broker::bench_support::RouterBench;
use sagitta_proto::TopicFilter;

const SITES: usize = 100;
const DEVICES: usize = 1000;

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).unwrap()
}

/// The tree described in the module docs.
fn fleet() -> RouterBench {
    let mut r = RouterBench::new();
    let mut client = 0;
    for s in 0..SITES {
        for d in 0..DEVICES {
            r.subscribe(client, &filter(&format!("site/{s}/dev/{d}/cmd")));
            client += 1;
        }
    }
    for s in 0..SITES {
        r.subscribe(client, &filter(&format!("site/{s}/+/+/cmd")));
        r.subscribe(client + 1, &filter(&format!("site/{s}/#")));
        client += 2;
    }
    for _ in 0..10 {
        r.subscribe(client, &filter("+/+/+/+/cmd"));
        client += 1;
    }
    r
}

fn bench_match(c: &mut Criterion) {
    let mut r = fleet();
    assert_eq!(r.len(), SITES * DEVICES + 2 * SITES + 10);
    // 1 exact + the site's 2 wildcards + 10 global ones.
    assert_eq!(r.route("site/42/dev/420/cmd"), 13);
    assert_eq!(r.route("site/42/dev/420/status"), 1);
    let topics: Vec<String> = (0..1000)
        .map(|i| format!("site/{}/dev/{}/cmd", (i * 7) % SITES, (i * 13) % DEVICES))
        .collect();
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(topics.len() as u64));
    group.bench_function("match-100k-subs", |b| {
        b.iter(|| {
            let mut n = 0;
            for t in &topics {
                n += r.route(black_box(t));
            }
            n
        });
    });
    group.finish();
}

fn bench_insert_remove(c: &mut Criterion) {
    let mut r = fleet();
    let filters: Vec<TopicFilter> = (0..1000)
        .map(|i| filter(&format!("site/{}/dev/{}/cfg", i % SITES, i)))
        .collect();
    let first_new_client = SITES * DEVICES + 2 * SITES + 10;
    let mut group = c.benchmark_group("router");
    // One element = one subscribe plus one unsubscribe.
    group.throughput(Throughput::Elements(filters.len() as u64));
    group.bench_function("subscribe-unsubscribe-100k-subs", |b| {
        b.iter(|| {
            for (i, f) in filters.iter().enumerate() {
                r.subscribe(first_new_client + i, f);
            }
            for (i, f) in filters.iter().enumerate() {
                assert!(r.unsubscribe(first_new_client + i, f));
            }
        });
    });
    group.finish();
}

criterion_group!(benches, bench_match, bench_insert_remove);
criterion_main!(benches);
