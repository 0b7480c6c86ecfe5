//! kill -9 of a process applying leases loses no lease that was reported durable and never
//! leaves one address with two holders.
//!
//! The test binary re-runs itself as the child (selected by an environment variable). The child
//! prints each change *before* applying it (`op <seq> ...`, while holding the store, so the
//! sequence number is known) and each durable sequence number it observes (`durable <seq>`); the
//! kernel's pipe buffer keeps those lines when the child is killed. The parent kills it with
//! SIGKILL at a random moment, reopens the file, and checks that the file holds exactly the
//! replay of every change up to its committed sequence number, which is at least the highest
//! one reported durable.
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use redb::Database;
use stampede_control::leases::read_leases;
use stampede_control::{DurableLeaseStore, GroupCommitConfig};
use stampede_proto::dhcp::{
    ClientKey, Lease, LeaseChange, LeaseState, LeaseStore, MemoryLeaseStore,
};

const CHILD_ENV: &str = "STAMPEDE_LEASE_CRASH_CHILD_DB";
const THREADS: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Put { ip: Ipv4Addr, client: Vec<u8> },
    Remove(Ipv4Addr),
}

fn change_of(op: &Op, expires: Instant) -> LeaseChange {
    match op {
        Op::Put { ip, client } => LeaseChange::Put(Lease {
            ip: *ip,
            client: ClientKey(client.clone()),
            mac: [0x52, 0x54, 0, 0, client[0], client[1]],
            state: LeaseState::Bound,
            expires,
        }),
        Op::Remove(ip) => LeaseChange::Remove(*ip),
    }
}

/// The child: four threads applying changes as fast as they can until killed.
fn child(db_path: &str) {
    let db = Arc::new(Database::create(db_path).expect("child opens the db"));
    let store = DurableLeaseStore::open(db, GroupCommitConfig::default()).expect("child store");
    let durable = store.subscribe_durable();
    let store = Arc::new(Mutex::new(store));
    std::thread::spawn(move || {
        let mut last = 0;
        loop {
            let now = *durable.borrow();
            if now != last {
                println!("durable {now}");
                last = now;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let expires = Instant::now() + Duration::from_secs(3600);
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0u32.. {
                    let idx = (i.wrapping_mul(7919)) % 500;
                    let ip = Ipv4Addr::new(10, t, (idx / 250) as u8, (idx % 250) as u8);
                    let op = if i % 10 == 9 {
                        Op::Remove(ip)
                    } else {
                        Op::Put {
                            ip,
                            client: vec![t, (i % 64) as u8],
                        }
                    };
                    let mut s = store.lock().expect("store lock");
                    let seq = s.applied_seq() + 1;
                    match &op {
                        Op::Put { ip, client } => {
                            println!("op {seq} put {ip} {}", hex::encode(client))
                        }
                        Op::Remove(ip) => println!("op {seq} rm {ip}"),
                    }
                    let got = s.apply(change_of(&op, expires)).expect("apply");
                    assert_eq!(got, seq, "sequence numbers are dense");
                }
            })
        })
        .collect();
    // The parent kills us long before this; it only guards against an orphaned child.
    std::thread::sleep(Duration::from_secs(60));
    drop(workers);
    std::process::exit(3);
}

enum Line {
    Op(u64, Op),
    Durable(u64),
}

fn parse(line: &str) -> Option<Line> {
    // libtest prints "test <name> ... " without a newline before the child's first line.
    let mut w = line
        .split_whitespace()
        .skip_while(|t| *t != "op" && *t != "durable");
    match w.next()? {
        "durable" => Some(Line::Durable(w.next()?.parse().ok()?)),
        "op" => {
            let seq = w.next()?.parse().ok()?;
            let kind = w.next()?;
            let ip = w.next()?.parse().ok()?;
            let op = match kind {
                "put" => Op::Put {
                    ip,
                    client: hex::decode(w.next()?).ok()?,
                },
                "rm" => Op::Remove(ip),
                _ => return None,
            };
            Some(Line::Op(seq, op))
        }
        _ => None,
    }
}

#[test]
fn kill_9_loses_no_durable_lease() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(&path);
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let db_path = dir.path().join("leases.redb");
    let exe = std::env::current_exe().expect("test binary path");
    // Every change ever applied and committed, by sequence number, across rounds.
    let mut ops: BTreeMap<u64, Op> = BTreeMap::new();
    let mut committed = 0u64;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();

    for round in 0..3u32 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill_9_loses_no_durable_lease",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &db_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(parsed) = parse(&line)
                    && tx.send(parsed).is_err()
                {
                    break;
                }
            }
        });

        // Kill at a random moment after at least 2000 more changes were durable.
        let mut printed: BTreeMap<u64, Op> = BTreeMap::new();
        let mut max_durable = committed;
        let deadline = Instant::now() + Duration::from_secs(30);
        while max_durable < committed + 2000 {
            assert!(
                Instant::now() < deadline,
                "round {round}: child made no progress in 30 s"
            );
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Line::Op(seq, op)) => {
                    printed.insert(seq, op);
                }
                Ok(Line::Durable(seq)) => max_durable = max_durable.max(seq),
                Err(e) => panic!("round {round}: child output stopped: {e}"),
            }
        }
        let jitter = u64::from(seed.rotate_left(round * 7) % 40);
        std::thread::sleep(Duration::from_millis(jitter));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap child");
        assert!(
            !status.success(),
            "child was killed, not finished: {status:?}"
        );
        reader.join().expect("reader thread");
        for line in rx.try_iter() {
            match line {
                Line::Op(seq, op) => {
                    printed.insert(seq, op);
                }
                Line::Durable(seq) => max_durable = max_durable.max(seq),
            }
        }

        let db = Database::open(&db_path).expect("reopen after kill -9");
        let (records, file_seq) = read_leases(&db).expect("read leases");
        drop(db);
        assert!(
            file_seq >= max_durable,
            "round {round}: the file has committed up to {file_seq} but {max_durable} was reported durable"
        );
        // Changes the child printed but the file does not have were never acknowledged; the
        // next round reuses their sequence numbers.
        printed.retain(|&seq, _| seq <= file_seq);
        ops.extend(printed);
        committed = file_seq;
        let expected_seqs: Vec<u64> = (1..=committed).collect();
        assert!(
            ops.keys().copied().eq(expected_seqs.iter().copied()),
            "round {round}: every committed change was printed exactly once: {} printed, first {:?}, last {:?}, file at {committed}; first gap after {:?}",
            ops.len(),
            ops.keys().next(),
            ops.keys().next_back(),
            ops.keys().zip(1..).find(|(a, b)| **a != *b)
        );

        let mut replay = MemoryLeaseStore::new();
        let expires = Instant::now();
        for op in ops.values() {
            replay.apply(change_of(op, expires)).expect("replay");
        }
        let mut want: Vec<(Ipv4Addr, String)> = replay
            .leases()
            .map(|l| (l.ip, hex::encode(&l.client.0)))
            .collect();
        want.sort();
        let got: Vec<(Ipv4Addr, String)> =
            records.iter().map(|r| (r.ip, r.client.clone())).collect();
        assert_eq!(
            got.len(),
            want.len(),
            "round {round}: lease count after {committed} changes"
        );
        assert_eq!(
            got, want,
            "round {round}: the file is the replay of its committed changes"
        );
        let mut holders = HashSet::new();
        for r in &records {
            assert!(
                holders.insert(&r.client),
                "round {round}: client {} holds two addresses",
                r.client
            );
        }
        eprintln!(
            "round {round}: killed with {committed} changes committed ({} leases, {max_durable} reported durable)",
            records.len()
        );
    }
}
