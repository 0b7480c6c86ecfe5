//! A root's swarm with real BitTorrent clients (issue 17, the appliance's side): `stampede boot
//! --root` builds the small image's root and its hybrid torrent; Debian's aria2c downloads it
//! from the appliance's tracker and web seed, then other aria2c peers download it from that one.
//!
//! Each peer is a namespace of its own on one switch with the appliance (a machine of the
//! rack). What is proved:
//! - The served hybrid torrent is the signed manifest's: its v1 and v2 info hashes and `pieces
//!   root` are the ones the manifest signs; libtorrent 2.0 (python3-libtorrent, a v2
//!   implementation) reads the same hashes from it, and hashing the downloaded bytes itself gets
//!   the same `pieces root` and piece layer.
//! - Debian 12's v1 clients cannot take the hybrid (transmission 3.00 refuses it, aria2c 1.36
//!   computes a wrong info hash: see `stampede_rootfs::torrent::v1_only`), so the appliance also
//!   serves the torrent without its v2 keys (`image.v1.torrent`, hash signed in the manifest too);
//!   aria2c --show-files computes that hash, and aria2c with that torrent as served (tracker + web
//!   seed) gets the image byte-exact.
//! - Two more aria2c peers at once, given the same torrent without its web seed (same `info`,
//!   so the same swarm): the tracker is their only source of peers (the torrent is private: no
//!   DHT, no peer exchange, no local discovery), so every byte they end with came from peers.
//! - libtorrent takes the hybrid as served (tracker + web seed) and gets the image byte-exact,
//!   every piece checked against the torrent's hashes.
//! - Stampede's node agents join the swarm (`node_agents_fetch_a_root_from_an_aria2c_seed_and_
//!   from_each_other`): the agent's swarm fetch, run on the host (`stampede-node swarm-fetch`,
//!   not as PID 1), gets the root from an aria2c seed through the appliance's tracker with the
//!   web seed off, byte-exact and verified against the signed manifest; another agent then
//!   gets it from the first over the hybrid torrent's swarm, again with no byte from the
//!   appliance.
//! - A hostile peer (this test, through the same peer-wire core, flipping a byte of every
//!   block it uploads) announces itself as a seed: the agent catches its first piece, bans it
//!   (`banned [its address]`), and gets the root from the web seed, byte-exact.
//! - The tracker refuses an info hash that is none of its roots, with a bencoded
//!   `failure reason`, and gives no peers to a host on the link that holds no lease from the
//!   appliance (authoritative DHCP: the peers are machines that got their address from it).
mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use stampede_lab::{Lan, Netns, Process, require, root_image};
use stampede_proto::bencode::Value;
use stampede_rootfs::manifest::SignedManifest;
use support::appliance::{RootAppliance, bound, udhcpc, udhcpc_script};

/// One aria2c download of the small root over veth.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);
const PYTHON: &str = "/usr/bin/python3";

const PROGRAMS: &[&str] = &[
    "ip", "busybox", "umoci", "depmod", "apt-get", "dpkg-deb", "aria2c", "curl", PYTHON,
];

/// What libtorrent says about a torrent, and what it computes itself from the downloaded file.
const LIBTORRENT_CHECK: &str = r#"
import sys, os, libtorrent as lt
torrent, data = sys.argv[1], sys.argv[2]
ti = lt.torrent_info(torrent)
print("v1", ti.info_hashes().v1)
print("v2", ti.info_hashes().v2)
print("root", ti.files().root(0))
fs = lt.file_storage()
fs.add_file(os.path.basename(data), os.path.getsize(data))
ct = lt.create_torrent(fs, 1 << 20)
lt.set_piece_hashes(ct, os.path.dirname(data))
own = ct.generate()
root = own[b"info"][b"file tree"][os.path.basename(data).encode()][b""][b"pieces root"]
print("own_root", root.hex())
print("own_layer", own.get(b"piece layers", {}).get(root, b"").hex())
"#;

/// libtorrent downloading a torrent into a directory, listening on the peer's address only: it
/// prints its alerts and `seeding` once it
/// has every piece verified, or exits non-zero after 90 s.
const LIBTORRENT_DOWNLOAD: &str = r#"
import sys, time, libtorrent as lt
torrent, save, address = sys.argv[1], sys.argv[2], sys.argv[3]
cat = lt.alert.category_t
ses = lt.session({
    "listen_interfaces": address + ":6891",
    "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
    "alert_mask": cat.error_notification | cat.status_notification | cat.tracker_notification,
})
h = ses.add_torrent({"ti": lt.torrent_info(torrent), "save_path": save})
deadline = time.time() + 90
while time.time() < deadline:
    for a in ses.pop_alerts():
        print(a.what(), a.message(), flush=True)
    s = h.status()
    if s.is_seeding:
        print("seeding", s.total_payload_download, flush=True)
        sys.exit(0)
    time.sleep(0.2)
sys.exit("timed out: %s" % h.status().state)
"#;

/// What `stampede boot --root` printed about its root: its id.
fn root_id(stdout: &str) -> Option<String> {
    let line = stdout.lines().find(|l| l.starts_with("root "))?;
    line.split_whitespace().nth(1).map(str::to_owned)
}

fn curl(ns: &Netns, url: &str, out: &Path) {
    let got = ns
        .run(
            "curl",
            &["-sS", "-f", "-o", out.to_str().unwrap(), url],
            Duration::from_secs(30),
        )
        .expect("curl runs");
    assert!(got.status.success(), "curl {url}: {}", got.stderr);
}

/// aria2c in `ns` downloading `torrent` into `dir`, seeding for `seed_minutes` after.
fn aria2c(ns: &Netns, torrent: &Path, dir: &Path, port: u16, seed_minutes: &str) -> Process {
    fs::create_dir_all(dir).unwrap();
    let mut command = ns.command("aria2c");
    command
        .arg(format!("--dir={}", dir.display()))
        .arg(format!("--listen-port={port}"))
        .arg(format!("--seed-time={seed_minutes}"))
        .args([
            // Seed for the time given whatever the share ratio (its default, 1.0, would stop a
            // seed as soon as it uploaded one image's worth).
            "--seed-ratio=0.0",
            "--disable-ipv6=true",
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--file-allocation=none",
            "--summary-interval=0",
            "--console-log-level=warn",
            "--bt-stop-timeout=90",
            "--log-level=info",
        ])
        .arg(format!("--log={}", dir.join("aria2.log").display()))
        .arg(torrent)
        .stdout(Stdio::from(
            fs::File::create(dir.join("aria2.out")).unwrap(),
        ))
        .stderr(Stdio::from(
            fs::File::create(dir.join("aria2.err")).unwrap(),
        ));
    Process::spawn(command).expect("aria2c starts")
}

fn aria2_log(dir: &Path) -> String {
    ["aria2.out", "aria2.err", "aria2.log"]
        .iter()
        .map(|f| fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until aria2c's file holds exactly `expected` (pieces arrive out of order, so nothing
/// short of the whole content says it is done); fails if aria2c exits without it.
fn wait_complete(peer: &mut Process, file: &Path, dir: &Path, expected: &[u8]) {
    let deadline = std::time::Instant::now() + DOWNLOAD_TIMEOUT;
    loop {
        if fs::read(file).is_ok_and(|got| got == expected) {
            return;
        }
        if let Some(status) = peer.try_status() {
            panic!(
                "aria2c exited ({status}) without {}:\n{}",
                file.display(),
                aria2_log(dir)
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "aria2c did not get {} byte-exact in time:\n{}",
            file.display(),
            aria2_log(dir)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn bytes_of<'a>(value: &'a Value, key: &str) -> &'a [u8] {
    value
        .get(key)
        .and_then(Value::as_bytes)
        .unwrap_or_else(|| panic!("no {key} in {value:?}"))
}

#[test]
fn aria2c_peers_fetch_a_root_from_the_tracker_the_web_seed_and_each_other() {
    if !require!(PROGRAMS) {
        return;
    }
    let image = root_image::small_image().unwrap_or_else(|e| panic!("small image: {e}"));
    let lan = Lan::new().expect("lan");
    let (server, server_if) = lan.host("srv", Some(1)).expect("server host");
    let peers: Vec<(Netns, String)> = (0..3u8)
        .map(|i| lan.host(&format!("peer{i}"), None).expect("peer host"))
        .collect();
    // On the link, with an address, but no lease from the appliance.
    let (stranger, _) = lan.host("stranger", Some(200)).expect("stranger host");
    // STAMPEDE_KEEP_LAB=1 keeps the appliance's state and the peers' files and logs.
    let dir = tempfile::Builder::new()
        .prefix("stampede-swarm-")
        .disable_cleanup(std::env::var_os("STAMPEDE_KEEP_LAB").is_some())
        .tempdir()
        .expect("tempdir");
    let dhcp_range = format!("{}-{}", lan.subnet.host(100), lan.subnet.host(150));
    let appliance = RootAppliance::start(
        &server,
        &server_if,
        &image.source(),
        dir.path(),
        &["--dhcp-range", &dhcp_range],
    );
    let log = appliance.logger();
    let id = root_id(&log()).unwrap_or_else(|| panic!("no root line:\n{}", log()));
    let served = dir.path().join("roots/serve/roots").join(&id);
    let image_bytes = fs::read(served.join("image")).expect("the root's image");
    let base = format!("http://{}:8080", lan.subnet.host(1));
    // Every peer is a machine with a lease from the appliance (authoritative DHCP).
    let script = udhcpc_script(dir.path());
    let peer_ips: Vec<String> = peers
        .iter()
        .map(|(ns, iface)| {
            let out = udhcpc(ns, iface, 4, &script, &[]);
            bound(&format!("{}{}", out.stdout, out.stderr))["ip"].clone()
        })
        .collect();

    // The torrent as served, and the signed manifest it must agree with.
    let work = dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let torrent_path = work.join("root.torrent");
    curl(
        &peers[0].0,
        &format!("{base}/roots/{id}/image.torrent"),
        &torrent_path,
    );
    let torrent = Value::decode(&fs::read(&torrent_path).unwrap()).expect("canonical bencode");
    let key = fs::read_to_string(dir.path().join("manifest.key")).expect("the appliance's key");
    let mut seed = [0u8; 32];
    hex::decode_to_slice(key.trim(), &mut seed).expect("a hex key");
    let key = stampede_rootfs::manifest::ManifestSigningKey::from_bytes(&seed);
    let manifest_path = work.join("manifest");
    curl(
        &peers[0].0,
        &format!("{base}/roots/{id}/manifest"),
        &manifest_path,
    );
    let manifest = SignedManifest::from_bytes(&fs::read(&manifest_path).unwrap())
        .and_then(|m| m.verify(&key.verifying_key()))
        .expect("the signed manifest verifies");
    let swarm = manifest
        .swarm
        .clone()
        .expect("the manifest names its torrent");
    let (v1, v2) = stampede_rootfs::torrent::announced_hashes(&torrent).expect("info");
    assert_eq!(hex::encode(v1), swarm.info_hash_v1);
    assert_eq!(v2, swarm.info_hash_v2.0[..20]);
    let info = torrent.get("info").expect("info");
    assert_eq!(info.get("private").and_then(Value::as_int), Some(1));
    assert_eq!(
        info.get("piece length").and_then(Value::as_int),
        Some(manifest.chunk_size as i64)
    );
    assert_eq!(
        info.get("length").and_then(Value::as_int),
        Some(manifest.size as i64)
    );
    assert_eq!(
        bytes_of(&torrent, "announce"),
        format!("{base}/stampede/swarm/announce").as_bytes()
    );
    assert_eq!(
        torrent.get("url-list"),
        Some(&Value::List(vec![Value::text(&format!(
            "{base}/roots/{id}/image"
        ))]))
    );
    let name = String::from_utf8(bytes_of(info, "name").to_vec()).unwrap();

    // The v1-only torrent for Debian 12's clients (which cannot take the hybrid: see
    // `stampede_rootfs::torrent::v1_only`): same pieces, and aria2c computes the info hash the
    // manifest signs for it.
    let v1_path = work.join("root.v1.torrent");
    curl(
        &peers[0].0,
        &format!("{base}/roots/{id}/image.v1.torrent"),
        &v1_path,
    );
    let v1_torrent = Value::decode(&fs::read(&v1_path).unwrap()).expect("canonical bencode");
    let v1_info = v1_torrent.get("info").expect("info");
    assert!(v1_info.get("file tree").is_none(), "{v1_info:?}");
    assert_eq!(v1_info.get("pieces"), info.get("pieces"));
    assert_eq!(v1_torrent.get("url-list"), torrent.get("url-list"));
    let shown = peers[0]
        .0
        .run(
            "aria2c",
            &["--show-files", v1_path.to_str().unwrap()],
            Duration::from_secs(30),
        )
        .expect("aria2c --show-files");
    assert!(
        shown
            .stdout
            .contains(&format!("Info Hash: {}", swarm.v1_only_info_hash)),
        "aria2c --show-files ({}):\n{}{}",
        shown.status,
        shown.stdout,
        shown.stderr
    );

    // (c) An info hash that is none of this appliance's roots is refused.
    let unknown = work.join("unknown");
    let fake: String = (0..20).map(|i| format!("%{:02x}", 0xa0 + i)).collect();
    curl(
        &peers[0].0,
        &format!(
            "{base}/stampede/swarm/announce?info_hash={fake}&peer_id=-XX0001-abcdefghijkl&port=6881&left=1"
        ),
        &unknown,
    );
    let refused = Value::decode(&fs::read(&unknown).unwrap()).expect("bencode");
    assert!(
        String::from_utf8_lossy(bytes_of(&refused, "failure reason")).contains("unknown info_hash")
            && refused.get("peers").is_none(),
        "{refused:?}"
    );
    // A host on the link without a lease from the appliance gets no peers for a real root.
    let ours: String = v1.iter().map(|b| format!("%{b:02x}")).collect();
    let no_lease = work.join("no-lease");
    curl(
        &stranger,
        &format!(
            "{base}/stampede/swarm/announce?info_hash={ours}&peer_id=-XX0001-abcdefghijkl&port=6881&left=1"
        ),
        &no_lease,
    );
    let refused = Value::decode(&fs::read(&no_lease).unwrap()).expect("bencode");
    assert!(
        String::from_utf8_lossy(bytes_of(&refused, "failure reason")).contains("no lease")
            && refused.get("peers").is_none(),
        "{refused:?}"
    );

    // (a) The first machine: tracker + web seed (nobody else has the root yet).
    let first_dir = work.join("peer0");
    let mut first = aria2c(&peers[0].0, &v1_path, &first_dir, 6881, "10");
    wait_complete(&mut first, &first_dir.join(&name), &first_dir, &image_bytes);

    // libtorrent (v2) reads the served torrent with the manifest's hashes, and hashes the
    // downloaded bytes to the same pieces root and piece layer.
    let script = work.join("check.py");
    fs::write(&script, LIBTORRENT_CHECK).unwrap();
    let checked = peers[0]
        .0
        .run(
            PYTHON,
            &[
                script.to_str().unwrap(),
                torrent_path.to_str().unwrap(),
                first_dir.join(&name).to_str().unwrap(),
            ],
            Duration::from_secs(60),
        )
        .expect("python3");
    assert!(checked.status.success(), "{}", checked.stderr);
    let said = |key: &str| -> String {
        checked
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in {}", checked.stdout))
            .to_owned()
    };
    assert_eq!(said("v1"), swarm.info_hash_v1);
    assert_eq!(said("v2"), swarm.info_hash_v2.to_hex());
    assert_eq!(said("root"), swarm.pieces_root.to_hex());
    assert_eq!(said("own_root"), swarm.pieces_root.to_hex());
    let layer = match torrent.get("piece layers") {
        Some(Value::Dict(layers)) => layers
            .get(&swarm.pieces_root.0[..])
            .and_then(Value::as_bytes)
            .map(hex::encode)
            .unwrap_or_default(),
        _ => String::new(),
    };
    assert_eq!(said("own_layer"), layer, "the piece layer");

    // (b) Two more machines at once, with the same torrent but no web seed: only peers.
    let mut peers_only = v1_torrent.clone();
    if let Value::Dict(map) = &mut peers_only {
        map.remove(&b"url-list"[..]);
    }
    let peers_only_path = work.join("peers-only.torrent");
    fs::write(&peers_only_path, peers_only.to_bytes()).unwrap();
    let mut others: Vec<(Process, PathBuf)> = (1..3)
        .map(|i| {
            let d = work.join(format!("peer{i}"));
            let p = aria2c(&peers[i].0, &peers_only_path, &d, 6881, "0");
            (p, d)
        })
        .collect();
    for (process, d) in &mut others {
        wait_complete(process, &d.join(&name), d, &image_bytes);
    }
    // A v2 client takes the hybrid as served: libtorrent announces it (v1 and v2 hashes, both
    // tracked: a reply, no tracker error) and fetches it from the web seed, every piece checked
    // against its hashes.
    let v2_dir = work.join("libtorrent");
    fs::create_dir_all(&v2_dir).unwrap();
    let v2_script = work.join("download.py");
    fs::write(&v2_script, LIBTORRENT_DOWNLOAD).unwrap();
    let v2 = peers[2]
        .0
        .run(
            PYTHON,
            &[
                v2_script.to_str().unwrap(),
                torrent_path.to_str().unwrap(),
                v2_dir.to_str().unwrap(),
                &peer_ips[2],
            ],
            DOWNLOAD_TIMEOUT,
        )
        .expect("python3");
    assert!(
        v2.status.success()
            && v2.stdout.contains("seeding")
            && v2.stdout.contains("v1 received peers")
            && v2.stdout.contains("v2 received peers")
            && !v2.stdout.contains("tracker_error"),
        "libtorrent with the hybrid:\n{}{}",
        v2.stdout,
        v2.stderr
    );
    assert!(
        fs::read(v2_dir.join(&name)).is_ok_and(|got| got == image_bytes),
        "libtorrent's image differs from roots/{id}/image:\n{}",
        v2.stdout
    );

    // The seed's own log names the peers it uploaded to.
    let seed_log = aria2_log(&first_dir);
    for peer_ip in &peer_ips[1..] {
        assert!(
            seed_log.contains(peer_ip.as_str()),
            "peer 0 never talked to {peer_ip}:\n{seed_log}"
        );
    }
    drop(first);
    drop(appliance);
}

/// The node agent as built for the node initramfs (static musl), run here as a host program:
/// `STAMPEDE_NODE_AGENT` when the build took a prebuilt one, else where `build.rs` builds it
/// (`<target>/node-agent/x86_64-unknown-linux-musl/node-agent/stampede-node`).
fn node_agent() -> PathBuf {
    if let Some(prebuilt) = std::env::var_os("STAMPEDE_NODE_AGENT") {
        return PathBuf::from(prebuilt);
    }
    let exe = Path::new(support::appliance::STAMPEDE);
    let target = exe
        .parent()
        .and_then(Path::parent)
        .expect("the stampede binary is in <target>/<profile>/");
    let agent = target.join("node-agent/x86_64-unknown-linux-musl/node-agent/stampede-node");
    assert!(agent.exists(), "no node agent at {}", agent.display());
    agent
}

/// `stampede-node swarm-fetch` in `ns`, its output in `dir/agent.out`.
fn swarm_fetch(
    ns: &Netns,
    dir: &Path,
    manifest_url: &str,
    key_hex: &str,
    extra: &[&str],
) -> Process {
    fs::create_dir_all(dir).unwrap();
    let mut command = ns.command(node_agent().to_str().unwrap());
    command
        .args(["swarm-fetch", "--manifest", manifest_url, "--key", key_hex])
        .arg("--out")
        .arg(dir.join("image"))
        .args(extra)
        .stdout(Stdio::from(
            fs::File::create(dir.join("agent.out")).unwrap(),
        ))
        .stderr(Stdio::from(
            fs::File::create(dir.join("agent.err")).unwrap(),
        ));
    Process::spawn(command).expect("the node agent starts")
}

fn agent_log(dir: &Path) -> String {
    ["agent.out", "agent.err"]
        .iter()
        .map(|f| fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits for the agent's `swarm done:` line; fails if it exits first or takes too long.
fn wait_swarm_done(agent: &mut Process, dir: &Path) -> String {
    let done = stampede_lab::wait_for(DOWNLOAD_TIMEOUT, || {
        if let Some(line) = agent_log(dir)
            .lines()
            .find(|l| l.starts_with("swarm done:"))
        {
            return Some(Ok(line.to_owned()));
        }
        agent.try_status().map(Err)
    });
    match done {
        Some(Ok(line)) => line,
        Some(Err(status)) => panic!("the agent exited ({status}):\n{}", agent_log(dir)),
        None => panic!("the agent did not finish in time:\n{}", agent_log(dir)),
    }
}

#[test]
fn node_agents_fetch_a_root_from_an_aria2c_seed_and_from_each_other() {
    if !require!(PROGRAMS) {
        return;
    }
    let image = root_image::small_image().unwrap_or_else(|e| panic!("small image: {e}"));
    let lan = Lan::new().expect("lan");
    let (server, server_if) = lan.host("srv", Some(1)).expect("server host");
    let peers: Vec<(Netns, String)> = (0..3u8)
        .map(|i| lan.host(&format!("agent{i}"), None).expect("peer host"))
        .collect();
    let dir = tempfile::Builder::new()
        .prefix("stampede-swarm-agents-")
        .disable_cleanup(std::env::var_os("STAMPEDE_KEEP_LAB").is_some())
        .tempdir()
        .expect("tempdir");
    let dhcp_range = format!("{}-{}", lan.subnet.host(100), lan.subnet.host(150));
    let appliance = RootAppliance::start(
        &server,
        &server_if,
        &image.source(),
        dir.path(),
        &["--dhcp-range", &dhcp_range],
    );
    let log = appliance.logger();
    let id = root_id(&log()).unwrap_or_else(|| panic!("no root line:\n{}", log()));
    let served = dir.path().join("roots/serve/roots").join(&id);
    let image_bytes = fs::read(served.join("image")).expect("the root's image");
    let base = format!("http://{}:8080", lan.subnet.host(1));
    let manifest_url = format!("{base}/roots/{id}/manifest");
    let script = udhcpc_script(dir.path());
    let peer_ips: Vec<String> = peers
        .iter()
        .map(|(ns, iface)| {
            let out = udhcpc(ns, iface, 4, &script, &[]);
            bound(&format!("{}{}", out.stdout, out.stderr))["ip"].clone()
        })
        .collect();
    let key = fs::read_to_string(dir.path().join("manifest.key")).expect("the appliance's key");
    let mut seed = [0u8; 32];
    hex::decode_to_slice(key.trim(), &mut seed).expect("a hex key");
    let key_hex = hex::encode(
        stampede_rootfs::manifest::ManifestSigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes(),
    );
    let work = dir.path().join("work");
    fs::create_dir_all(&work).unwrap();

    // A real client seeds the v1-only twin (the swarm Debian 12's aria2c can join), having
    // fetched it from the tracker and the web seed.
    let v1_path = work.join("root.v1.torrent");
    curl(
        &peers[0].0,
        &format!("{base}/roots/{id}/image.v1.torrent"),
        &v1_path,
    );
    let seed_dir = work.join("aria2c");
    let mut aria = aria2c(&peers[0].0, &v1_path, &seed_dir, 6881, "10");
    let name = {
        let torrent = Value::decode(&fs::read(&v1_path).unwrap()).expect("bencode");
        String::from_utf8(bytes_of(torrent.get("info").expect("info"), "name").to_vec()).unwrap()
    };
    wait_complete(&mut aria, &seed_dir.join(&name), &seed_dir, &image_bytes);

    // (1) The agent's swarm fetch, web seed off, joins that swarm: every byte from aria2c.
    let first_dir = work.join("agent1-v1");
    let mut first = swarm_fetch(
        &peers[1].0,
        &first_dir,
        &manifest_url,
        &key_hex,
        &["--v1-only", "--peers-only", "--port", "6881"],
    );
    let done = wait_swarm_done(&mut first, &first_dir);
    let size = image_bytes.len();
    assert!(
        done.contains(&format!(": {size} from peers"))
            && done.contains(" 0 from the appliance (0 pieces)")
            && done.contains("banned []"),
        "{done}\n{}",
        agent_log(&first_dir)
    );
    assert!(
        fs::read(first_dir.join("image")).is_ok_and(|got| got == image_bytes),
        "the agent's image differs from roots/{id}/image"
    );
    let out = first
        .wait_output(Duration::from_secs(30))
        .expect("the agent exits");
    assert!(out.status.success(), "{}", agent_log(&first_dir));
    assert!(
        aria2_log(&seed_dir).contains(peer_ips[1].as_str()),
        "aria2c never talked to the agent at {}:\n{}",
        peer_ips[1],
        aria2_log(&seed_dir)
    );

    // (2) Two agents on the hybrid torrent's swarm (the one node agents use): the first
    // with the appliance as web seed (nobody else has the root: all of it from there), then
    // seeding; the second with the web seed off, so all of it from the first agent.
    let a_dir = work.join("agent1");
    let mut a = swarm_fetch(
        &peers[1].0,
        &a_dir,
        &manifest_url,
        &key_hex,
        &["--port", "6882", "--seed-secs", "60"],
    );
    let done = wait_swarm_done(&mut a, &a_dir);
    assert!(
        done.contains(&format!(" {size} from the appliance")),
        "{done}\n{}",
        agent_log(&a_dir)
    );
    let b_dir = work.join("agent2");
    let mut b = swarm_fetch(
        &peers[2].0,
        &b_dir,
        &manifest_url,
        &key_hex,
        &["--peers-only", "--port", "6882"],
    );
    let done = wait_swarm_done(&mut b, &b_dir);
    assert!(
        done.contains(&format!(": {size} from peers"))
            && done.contains(" 0 from the appliance (0 pieces)"),
        "{done}\n{}\n--- the seeding agent ---\n{}",
        agent_log(&b_dir),
        agent_log(&a_dir)
    );
    assert!(
        fs::read(b_dir.join("image")).is_ok_and(|got| got == image_bytes),
        "the second agent's image differs from roots/{id}/image"
    );
    drop(a);
    drop(aria);
    drop(appliance);
}

/// A seed that corrupts every block it uploads: the peer-wire core as a seed, one connection
/// accepted on `listener`, until `stop`.
fn hostile_seed(
    listener: std::net::TcpListener,
    manifest: stampede_rootfs::manifest::RootManifest,
    info_hash: [u8; 20],
    image: Vec<u8>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    use std::{io::Read as _, io::Write as _, sync::atomic::Ordering, time::Instant};

    use stampede_proto::peerwire::{PeerKey, PeerSwarm, PieceSpec, SwarmConfig};
    std::thread::spawn(move || {
        let pieces: Vec<PieceSpec> = manifest
            .chunks
            .iter()
            .map(|c| PieceSpec {
                len: c.size as u32,
                sha256: c.sha256.0,
            })
            .collect();
        let all = vec![true; pieces.len()];
        let mut swarm = PeerSwarm::new(
            Instant::now(),
            SwarmConfig::default(),
            info_hash,
            *b"-XX0001-hostilepeer1",
            pieces,
            all,
        );
        listener.set_nonblocking(true).unwrap();
        let mut sent = 0u64;
        let mut key = 0;
        while !stop.load(Ordering::SeqCst) {
            let Ok((mut stream, addr)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            key += 1;
            let key = PeerKey(key);
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            swarm.add_peer(Instant::now(), key, addr.ip(), false);
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::SeqCst) {
                while let Some(block) = swarm.poll_upload(key) {
                    let at = manifest.offset(block.piece as usize) as usize + block.begin as usize;
                    let mut data = image[at..at + block.len as usize].to_vec();
                    data[0] ^= 0x5a;
                    swarm.send_block(Instant::now(), key, block, &data);
                    sent += 1;
                }
                let mut out = Vec::new();
                swarm.poll_transmit(key, &mut out);
                if stream.write_all(&out).is_err() {
                    break;
                }
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => swarm.handle_input(Instant::now(), key, &buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            swarm.handle_closed(Instant::now(), key);
        }
        sent
    })
}

#[test]
fn a_hostile_peer_sending_corrupt_pieces_is_banned_and_the_root_still_verified() {
    if !require!(PROGRAMS) {
        return;
    }
    let image = root_image::small_image().unwrap_or_else(|e| panic!("small image: {e}"));
    let lan = Lan::new().expect("lan");
    let (server, server_if) = lan.host("srv", Some(1)).expect("server host");
    let (hostile, hostile_if) = lan.host("hostile", None).expect("hostile host");
    let (machine, machine_if) = lan.host("machine", None).expect("machine host");
    let dir = tempfile::Builder::new()
        .prefix("stampede-swarm-hostile-")
        .disable_cleanup(std::env::var_os("STAMPEDE_KEEP_LAB").is_some())
        .tempdir()
        .expect("tempdir");
    let dhcp_range = format!("{}-{}", lan.subnet.host(100), lan.subnet.host(150));
    let appliance = RootAppliance::start(
        &server,
        &server_if,
        &image.source(),
        dir.path(),
        &["--dhcp-range", &dhcp_range],
    );
    let log = appliance.logger();
    let id = root_id(&log()).unwrap_or_else(|| panic!("no root line:\n{}", log()));
    let served = dir.path().join("roots/serve/roots").join(&id);
    let image_bytes = fs::read(served.join("image")).expect("the root's image");
    let base = format!("http://{}:8080", lan.subnet.host(1));
    let manifest_url = format!("{base}/roots/{id}/manifest");
    // Both hold leases: the hostile peer is a machine of the fleet gone bad.
    let script = udhcpc_script(dir.path());
    let hostile_ip = {
        let out = udhcpc(&hostile, &hostile_if, 4, &script, &[]);
        bound(&format!("{}{}", out.stdout, out.stderr))["ip"].clone()
    };
    udhcpc(&machine, &machine_if, 4, &script, &[]);
    let key = fs::read_to_string(dir.path().join("manifest.key")).expect("the appliance's key");
    let mut seed = [0u8; 32];
    hex::decode_to_slice(key.trim(), &mut seed).expect("a hex key");
    let signing = stampede_rootfs::manifest::ManifestSigningKey::from_bytes(&seed);
    let key_hex = hex::encode(signing.verifying_key().to_bytes());
    let work = dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let manifest_path = work.join("manifest");
    curl(&machine, &manifest_url, &manifest_path);
    let manifest = SignedManifest::from_bytes(&fs::read(&manifest_path).unwrap())
        .and_then(|m| m.verify(&signing.verifying_key()))
        .expect("the signed manifest verifies");
    let mut info_hash = [0u8; 20];
    hex::decode_to_slice(
        &manifest.swarm.as_ref().expect("swarm").info_hash_v1,
        &mut info_hash,
    )
    .expect("hex");

    // The hostile peer listens in its namespace and announces itself as a seed.
    let listener = hostile
        .in_namespace(|| std::net::TcpListener::bind("0.0.0.0:6881"))
        .expect("setns")
        .expect("bind 6881");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seeder = hostile_seed(
        listener,
        manifest.clone(),
        info_hash,
        image_bytes.clone(),
        stop.clone(),
    );
    let hash_param: String = info_hash.iter().map(|b| format!("%{b:02x}")).collect();
    curl(
        &hostile,
        &format!(
            "{base}/stampede/swarm/announce?info_hash={hash_param}&peer_id=-XX0001-hostilepeer1&port=6881&left=0&event=started"
        ),
        &work.join("hostile-announce"),
    );

    let agent_dir = work.join("agent");
    let mut agent = swarm_fetch(&machine, &agent_dir, &manifest_url, &key_hex, &[]);
    let done = wait_swarm_done(&mut agent, &agent_dir);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let corrupt_blocks = seeder.join().expect("the hostile peer");
    assert!(corrupt_blocks > 0, "the hostile peer was never asked");
    assert!(
        done.contains(&format!("banned [{hostile_ip}]"))
            && agent_log(&agent_dir).contains(&format!("banned {hostile_ip}: piece ")),
        "{done}\n{}",
        agent_log(&agent_dir)
    );
    assert!(
        fs::read(agent_dir.join("image")).is_ok_and(|got| got == image_bytes),
        "the agent's image differs from roots/{id}/image"
    );
    drop(agent);
    drop(appliance);
}
