//! The bench's event loop: simulated machines on one ring, and the progress line.
use super::*;

/// Runs `machines` (index, address) on one ring until all have finished or the deadline
/// passed. Events go to the machine and connection slot owning the socket; timers come from one
/// heap.
pub(super) fn drive(
    ctx: &Ctx,
    ring: &mut ClientRing,
    machines: Vec<(usize, Ipv4Addr)>,
) -> anyhow::Result<Vec<RootRecord>> {
    let mut sims: Vec<RootSim> = machines
        .into_iter()
        .enumerate()
        .map(|(pos, (index, ip))| RootSim::new(ctx, index, pos, ip))
        .collect();
    let mut owners: Vec<(usize, usize)> = Vec::new();
    // (when, machine); an entry is live while it equals the machine's `wake`.
    let mut timers = BinaryHeap::new();
    let mut queued: Vec<Option<Instant>> = sims.iter().map(|s| s.wake).collect();
    for (i, s) in sims.iter().enumerate() {
        if let Some(w) = s.wake {
            timers.push(Reverse((w, i)));
        }
    }
    let mut counted = vec![false; sims.len()];
    let mut remaining = sims.len();
    let mut touched = Vec::new();
    while remaining > 0 {
        let now = Instant::now();
        if now >= ctx.deadline {
            let mut env = Env {
                ctx,
                io: ring.sockets(),
                owners: &mut owners,
            };
            for sim in &mut sims {
                sim.expire(&mut env, now);
            }
            break;
        }
        let next = timers
            .peek()
            .map_or(ctx.deadline, |Reverse((t, _))| *t)
            .min(ctx.deadline);
        ring.run_once(Some(next), |event, io| {
            let now = Instant::now();
            let Some(&(i, slot)) = owners.get(event.socket().index()) else {
                return;
            };
            if i >= sims.len() {
                return;
            }
            let mut env = Env {
                ctx,
                io,
                owners: &mut owners,
            };
            sims[i].on_event(&mut env, now, slot, event);
            touched.push(i);
        })
        .context("driving the machines' sockets")?;
        let now = Instant::now();
        while let Some(&Reverse((t, i))) = timers.peek() {
            if t > now {
                break;
            }
            timers.pop();
            if queued[i] == Some(t) {
                queued[i] = None;
            }
            if sims[i].wake == Some(t) {
                let mut env = Env {
                    ctx,
                    io: ring.sockets(),
                    owners: &mut owners,
                };
                sims[i].on_timer(&mut env, now);
                touched.push(i);
            }
        }
        for i in touched.drain(..) {
            if sims[i].is_finished() {
                if !counted[i] {
                    counted[i] = true;
                    remaining -= 1;
                }
            } else if let Some(w) = sims[i].wake
                && queued[i] != Some(w)
            {
                queued[i] = Some(w);
                timers.push(Reverse((w, i)));
            }
        }
    }
    Ok(sims.into_iter().map(|s| s.record).collect())
}

/// A line every 5 s on stderr until `stop`.
pub(super) fn show_progress(p: &Progress, stop: &AtomicBool, epoch: Instant, total: usize) {
    let mut ticks = 0u64;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        ticks += 1;
        if ticks.is_multiple_of(25) {
            eprintln!(
                "bench root: {:.0} s: {}/{total} roots verified, {} failed, {:.0} MiB",
                epoch.elapsed().as_secs_f64(),
                p.verified.load(Ordering::Relaxed),
                p.failed.load(Ordering::Relaxed),
                p.bytes.load(Ordering::Relaxed) as f64 / 1048576.0
            );
        }
    }
}
