//! Diskless roots imported through the control API, in a namespace lab: `stampede ctl images
//! import oci-archive:FILE` builds the small test image's root on a running `stampede boot`, a
//! profile of the API names it, and a DHCP + HTTP client (busybox udhcpc as iPXE, then curl)
//! gets a script that boots the root's kernel and node initramfs with the manifest's URL; the
//! manifest verifies with the appliance's key and every chunk it lists is served and hashes
//! right. Then broken images, each refused by ctl with its cause named, nothing recorded, the
//! appliance still serving.
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use stampede_lab::{Netns, Output, Process, TwoHosts, require, root_image};
use stampede_rootfs::manifest::{ManifestSigningKey, SignedManifest};
use support::appliance::{
    ADMIN_TOKEN, API, ApplianceLab, LabBoot, Payload, STAMPEDE, UDHCPC_IPXE, bound, serve_command,
    stop, udhcpc, udhcpc_script, wait_for_api,
};

/// The small image (umoci, Debian's kernel package) and the lab's clients.
const PROGRAMS: &[&str] = &[
    "busybox", "curl", "ss", "skopeo", "umoci", "depmod", "apt-get", "dpkg-deb", "gzip",
];

/// Pull, flatten, erofs, chunks and the node initramfs of the small image, in a debug build on
/// shared cores.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(300);

fn ctl_raw(ns: &Netns, args: &[&str], timeout: Duration) -> Output {
    let mut command = ns.command(STAMPEDE);
    command
        .args(["ctl", "--url", API, "--token", ADMIN_TOKEN])
        .args(args)
        .env_remove("STAMPEDE_REGISTRY_CREDS");
    stampede_lab::run_with_timeout(command, timeout).expect("ctl runs")
}

fn ctl(ns: &Netns, args: &[&str]) -> String {
    let out = ctl_raw(ns, args, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "ctl {args:?}: {}{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

fn images_json(ns: &Netns) -> Value {
    serde_json::from_str(&ctl(ns, &["--json", "images", "list"])).expect("images list is JSON")
}

fn run(program: &str, args: &[&str]) -> String {
    let mut command = Command::new(program);
    command.args(args);
    let out = stampede_lab::run_with_timeout(command, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// curl in `ns`, the body as bytes (written to a file: a kernel is no UTF-8).
fn fetch(ns: &Netns, url: &str, scratch: &Path) -> Vec<u8> {
    let file = scratch.join("fetched");
    let out = ns
        .run(
            "curl",
            &["-sSf", "-o", file.to_str().unwrap(), url],
            Duration::from_secs(30),
        )
        .expect("curl runs");
    assert!(out.status.success(), "GET {url}: {}", out.stderr);
    fs::read(&file).expect("fetched file")
}

/// A running `stampede boot` with its state (and root cache, and manifest key) in `payload`.
struct Appliance {
    // Field order is drop order: the process goes before its namespaces and state.
    server: Process,
    lab: TwoHosts,
    payload: Payload,
    image: root_image::SmallImage,
    archive: PathBuf,
}

impl Appliance {
    fn start() -> Self {
        let image = root_image::small_image().unwrap_or_else(|e| panic!("small image: {e}"));
        let payload = Payload::new(4096, 4096);
        let archive = payload.dir.path().join("small.oci.tar");
        run(
            "skopeo",
            &[
                "copy",
                "--quiet",
                &image.source(),
                &format!("oci-archive:{}", archive.display()),
            ],
        );
        let ApplianceLab {
            lab,
            payload,
            server,
        } = LabBoot::with_payload(payload)
            .dhcp_range(100, 150)
            .api()
            .start();
        Self {
            server,
            lab,
            payload,
            image,
            archive,
        }
    }

    fn ns(&self) -> &Netns {
        &self.lab.server
    }

    fn state_dir(&self) -> &Path {
        self.payload.dir.path()
    }

    /// `ctl images import oci-archive:<archive> --name NAME`; its output.
    fn import(&self, source: &str, name: &str) -> Output {
        ctl_raw(
            self.ns(),
            &["images", "import", source, "--name", name],
            IMPORT_TIMEOUT,
        )
    }

    fn import_small(&self) -> Value {
        let source = format!("oci-archive:{}", self.archive.display());
        let out = self.import(&source, "small");
        assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
        let images = images_json(self.ns());
        let small = images
            .as_array()
            .expect("a list")
            .iter()
            .find(|i| i["name"] == "small")
            .unwrap_or_else(|| panic!("small is not listed: {images}"))
            .clone();
        assert_eq!(small["kind"], "root", "{small}");
        small
    }

    /// The served root directories: `<state>/roots/serve/roots/<id>`.
    fn built_roots(&self) -> Vec<String> {
        let dir = self.state_dir().join("roots/serve/roots");
        let mut ids: Vec<String> = fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

/// The manifest digest skopeo reads from `source`.
fn skopeo_digest(source: &str) -> String {
    let inspect: Value =
        serde_json::from_str(&run("skopeo", &["inspect", source])).expect("skopeo inspect JSON");
    inspect["Digest"].as_str().expect("Digest").to_owned()
}

#[test]
fn a_root_imported_through_ctl_boots_from_an_api_profile() {
    if !require!(PROGRAMS) {
        return;
    }
    let appliance = Appliance::start();
    let ns = appliance.ns();
    let scratch = appliance.state_dir().join("scratch");
    fs::create_dir_all(&scratch).expect("scratch dir");

    // The import, followed by ctl: the pull's bytes, then the build, then the root.
    let source = format!("oci-archive:{}", appliance.archive.display());
    let out = appliance.import(&source, "small");
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    // Lines at most once a second: a quick pull may show only as its bytes in the next one.
    let layers: u64 = {
        let manifest = Layout {
            dir: appliance.image.layout.clone(),
        }
        .manifest(root_image::SMALL_TAG);
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .chain([&manifest["config"]])
            .map(|d| d["size"].as_u64().unwrap())
            .sum()
    };
    assert!(
        out.stdout
            .contains(&format!("import 1 done: {layers}/{layers} bytes (100%)")),
        "the pull's bytes (config and layers) shown: {}",
        out.stdout
    );
    let digest = skopeo_digest(&source);
    let id = digest.strip_prefix("sha256:").expect("sha256 digest");
    assert!(
        out.stdout.lines().any(|l| l
            .starts_with(&format!("root small image {digest} root {id} kernel "))
            && l.ends_with(" stored")),
        "{}",
        out.stdout
    );

    // Listed with its digest, as a table and as JSON.
    let table = ctl(ns, &["images", "list"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("small "))
        .unwrap_or_else(|| panic!("no row for small: {table}"));
    assert!(row.contains(" root ") && row.contains(&digest), "{table}");
    let images = images_json(ns);
    let small = &images[0];
    assert_eq!(small["sha256"], id, "{images}");
    let root = &small["root"];
    assert_eq!(root["image"], digest.as_str());
    assert_eq!(
        root["kernel_release"],
        appliance.image.kernel.release.as_str(),
        "the image's own kernel"
    );
    assert!(root["chunks"].as_u64().unwrap() > 0, "{root}");

    // The same image again changes nothing.
    let again = appliance.import(&source, "small");
    assert!(again.status.success(), "{}{}", again.stdout, again.stderr);
    assert!(again.stdout.contains(" unchanged"), "{}", again.stdout);
    assert_eq!(
        images_json(ns),
        images,
        "a re-import leaves the record alone"
    );

    // A profile naming an unknown root is refused, naming both; nothing is stored.
    let refused = ctl_raw(
        ns,
        &["profiles", "add", "ghost", "--root", "no-such-root"],
        Duration::from_secs(30),
    );
    assert!(!refused.status.success(), "{}", refused.stdout);
    assert!(
        refused.stderr.contains("422")
            && refused.stderr.contains("\"ghost\"")
            && refused.stderr.contains("\"no-such-root\""),
        "{}",
        refused.stderr
    );
    assert!(!ctl(ns, &["profiles", "list"]).contains("ghost"));

    // The machine boots the profile that names the root.
    ctl(
        ns,
        &[
            "profiles",
            "add",
            "diskless",
            "--root",
            "small",
            "--cmdline",
            "console=ttyS0",
        ],
    );
    let mac = appliance
        .lab
        .client
        .run(
            "cat",
            &[&format!(
                "/sys/class/net/{}/address",
                appliance.lab.client_if
            )],
            Duration::from_secs(5),
        )
        .expect("client MAC")
        .stdout
        .trim()
        .to_owned();
    ctl(ns, &["machines", "add", &mac, "--profile", "diskless"]);
    // The API's change reaches the data plane as a reload.
    let script_path = udhcpc_script(&scratch);
    let dhcp = udhcpc(
        &appliance.lab.client,
        &appliance.lab.client_if,
        4,
        &script_path,
        UDHCPC_IPXE,
    );
    let lease = bound(&dhcp.combined());
    let server = appliance.lab.server_ip();
    let base = format!("http://{server}:8080");
    assert!(
        lease["boot_file"].starts_with(&format!("{base}/boot.ipxe")),
        "{lease:?}"
    );
    let client = &appliance.lab.client;
    // The machine's profile reaches the data plane as a reload, soon after the API answered.
    let script = stampede_lab::wait_for(Duration::from_secs(10), || {
        let probe = String::from_utf8(fetch(client, &lease["boot_file"], &scratch)).ok()?;
        let chain = probe
            .lines()
            .find_map(|l| l.strip_prefix("chain "))
            .unwrap_or_else(|| panic!("no chain line: {probe}"))
            .replace("${platform}", "pcbios")
            .replace("${buildarch}", "i386")
            .replace("${ip}", &lease["ip"]);
        let script = String::from_utf8(fetch(client, &chain, &scratch)).ok()?;
        script.contains("stampede.manifest=").then_some(script)
    })
    .expect("the machine's script boots the root");
    let kernel_url = format!("{base}/files/roots/{id}/vmlinuz");
    let initrd_url = format!("{base}/files/roots/{id}/node-initrd.img");
    let manifest_url = format!("{base}/roots/{id}/manifest");
    let bootif = format!("BOOTIF=01-{}", mac.replace(':', "-"));
    let kernel_line = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line: {script}"));
    assert!(
        kernel_line.starts_with(&format!("kernel {kernel_url}")),
        "{script}"
    );
    assert!(
        kernel_line.contains(&format!(
            "console=ttyS0 stampede.manifest={manifest_url} {bootif}"
        )),
        "{script}"
    );
    assert!(
        script.contains(&format!("initrd --name node-initrd.img {initrd_url}")),
        "{script}"
    );

    // The kernel is the image's own; the initrd is the node initramfs the root was built with.
    let kernel = fetch(client, &kernel_url, &scratch);
    let image_kernel = fs::read(appliance.image.kernel.vmlinuz()).expect("image kernel");
    assert_eq!(
        sha256_hex(&kernel),
        sha256_hex(&image_kernel),
        "the image's kernel"
    );
    let initrd = fetch(client, &initrd_url, &scratch);
    assert_eq!(initrd.len() as u64, root["initrd_bytes"].as_u64().unwrap());
    assert!(
        initrd.starts_with(b"070701") || initrd.starts_with(&[0x1f, 0x8b]),
        "a newc cpio archive, or a gzip'd one"
    );

    // The manifest verifies with the appliance's key, and every chunk is served and right.
    let seed_hex = fs::read_to_string(appliance.state_dir().join("manifest.key")).expect("key");
    let mut seed = [0u8; 32];
    hex::decode_to_slice(seed_hex.trim(), &mut seed).expect("hex seed");
    let trusted = ManifestSigningKey::from_bytes(&seed).verifying_key();
    let signed = SignedManifest::from_bytes(&fetch(client, &manifest_url, &scratch))
        .expect("a signed manifest");
    let manifest = signed
        .verify(&trusted)
        .expect("signed by the appliance's key");
    assert_eq!(manifest.image, digest);
    assert_eq!(
        manifest.chunks.len() as u64,
        root["chunks"].as_u64().unwrap()
    );
    assert_eq!(manifest.size, small["size"].as_u64().unwrap());
    let other = ManifestSigningKey::from_bytes(&[7u8; 32]).verifying_key();
    assert!(
        signed.verify(&other).is_err(),
        "another key does not verify it"
    );
    let mut total = 0;
    for chunk in &manifest.chunks {
        let hex = chunk.sha256.to_hex();
        let bytes = fetch(client, &format!("{base}/chunks/{hex}"), &scratch);
        assert_eq!(sha256_hex(&bytes), hex, "chunk {hex}");
        assert_eq!(bytes.len() as u64, chunk.size, "chunk {hex}");
        total += chunk.size;
    }
    assert_eq!(total, manifest.size, "the chunks add up to the root");

    // Forgetting the root: refused while the profile boots it, then removed (files stay).
    let in_use = ctl_raw(ns, &["images", "rm", "small"], Duration::from_secs(30));
    assert!(
        !in_use.status.success() && in_use.stderr.contains("diskless"),
        "{}{}",
        in_use.stdout,
        in_use.stderr
    );
    assert_eq!(images_json(ns), images, "a refused removal changes nothing");
    let (out, stats) = stop(appliance.server);
    assert!(
        stats["http_2xx"] >= 4 + manifest.chunks.len() as u64,
        "{}",
        out.stdout
    );
}

/// An OCI layout copied from the small image's, to be broken.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn copy_of(image: &root_image::SmallImage, dir: &Path) -> Self {
        run(
            "cp",
            &["-a", image.layout.to_str().unwrap(), dir.to_str().unwrap()],
        );
        Self {
            dir: dir.to_owned(),
        }
    }

    fn source(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").expect("sha256 digest"))
    }

    fn read_json(&self, path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).expect("read JSON")).expect("JSON")
    }

    fn put_blob(&self, bytes: &[u8]) -> Value {
        let digest = format!("sha256:{}", sha256_hex(bytes));
        fs::write(self.blob(&digest), bytes).expect("write blob");
        serde_json::json!({ "digest": digest, "size": bytes.len() })
    }

    fn manifest(&self, tag: &str) -> Value {
        let index = self.read_json(&self.dir.join("index.json"));
        let entry = index["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no {tag} in {index}"))
            .clone();
        self.read_json(&self.blob(entry["digest"].as_str().unwrap()))
    }

    fn config(&self, manifest: &Value) -> Value {
        self.read_json(&self.blob(manifest["config"]["digest"].as_str().unwrap()))
    }

    /// Writes `config` and `manifest` (pointed at it) and tags the manifest `tag`.
    fn put_image(&self, tag: &str, mut manifest: Value, config: &Value) {
        let config = self.put_blob(&serde_json::to_vec(config).unwrap());
        manifest["config"]["digest"] = config["digest"].clone();
        manifest["config"]["size"] = config["size"].clone();
        let blob = self.put_blob(&serde_json::to_vec(&manifest).unwrap());
        let path = self.dir.join("index.json");
        let mut index = self.read_json(&path);
        let manifests = index["manifests"].as_array_mut().expect("manifests");
        manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": blob["digest"], "size": blob["size"],
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }));
        fs::write(&path, serde_json::to_vec(&index).unwrap()).expect("write index");
    }

    /// The image with one more layer: `members` as a gzip'd tar.
    fn with_layer(&self, tag: &str, members: &[TarMember<'_>]) {
        let tar = tar_of(members);
        let gz = gzip(&tar, &self.dir);
        let layer = self.put_blob(&gz);
        let mut manifest = self.manifest(root_image::SMALL_TAG);
        let mut config = self.config(&manifest);
        manifest["layers"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer["digest"], "size": layer["size"],
            }));
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(format!("sha256:{}", sha256_hex(&tar)).into());
        self.put_image(tag, manifest, &config);
    }
}

enum TarMember<'a> {
    File(&'a str, &'a [u8]),
    HardLink(&'a str, &'a str),
}

/// A ustar archive (POSIX.1-1988 header layout), written by hand so the test controls every
/// name byte: `tar` itself refuses to write `..` members.
fn tar_of(members: &[TarMember<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for member in members {
        let (name, body, kind, link): (&str, &[u8], u8, &str) = match member {
            TarMember::File(name, body) => (name, body, b'0', ""),
            TarMember::HardLink(name, target) => (name, b"", b'1', target),
        };
        let mut h = [0u8; 512];
        let put = |h: &mut [u8; 512], at: usize, text: &[u8]| {
            h[at..at + text.len()].copy_from_slice(text);
        };
        put(&mut h, 0, name.as_bytes());
        put(&mut h, 100, b"0000644\0");
        put(&mut h, 108, b"0000000\0");
        put(&mut h, 116, b"0000000\0");
        put(&mut h, 124, format!("{:011o}\0", body.len()).as_bytes());
        put(&mut h, 136, b"00000000000\0");
        put(&mut h, 148, b"        ");
        h[156] = kind;
        put(&mut h, 157, link.as_bytes());
        put(&mut h, 257, b"ustar\0");
        put(&mut h, 263, b"00");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn gzip(bytes: &[u8], scratch: &Path) -> Vec<u8> {
    let file = scratch.join("layer.tar");
    fs::write(&file, bytes).expect("write tar");
    run("gzip", &["-nf", file.to_str().unwrap()]);
    let gz = scratch.join("layer.tar.gz");
    let out = fs::read(&gz).expect("gzip output");
    fs::remove_file(gz).expect("remove gzip output");
    out
}

/// Cuts a tar archive in the middle of its largest member.
fn truncate_in_largest_member(archive: &Path) {
    let bytes = fs::read(archive).expect("read archive");
    let (mut at, mut largest) = (0usize, (0usize, 0usize));
    while at + 512 <= bytes.len() && bytes[at..at + 512].iter().any(|&b| b != 0) {
        let field = &bytes[at + 124..at + 136];
        let text: String = field
            .iter()
            .take_while(|&&b| b != 0 && b != b' ')
            .map(|&b| b as char)
            .collect();
        let size = usize::from_str_radix(&text, 8).expect("octal size");
        if size > largest.1 {
            largest = (at + 512, size);
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    assert!(largest.1 > 1024, "a member to cut");
    let file = fs::OpenOptions::new()
        .write(true)
        .open(archive)
        .expect("open archive");
    file.set_len((largest.0 + largest.1 / 2) as u64)
        .expect("truncate");
}

#[test]
fn broken_images_are_refused_by_ctl_with_their_cause_and_nothing_is_stored() {
    if !require!(PROGRAMS) {
        return;
    }
    let appliance = Appliance::start();
    let ns = appliance.ns();
    let work = appliance.state_dir().join("broken");
    fs::create_dir_all(&work).expect("work dir");
    // A plain file import first (still working beside roots), so "unchanged" means something.
    let plain = work.join("plain.img");
    fs::write(&plain, b"a plain image\n").expect("plain file");
    ctl(
        ns,
        &[
            "images",
            "import",
            plain.to_str().unwrap(),
            "--name",
            "plain",
        ],
    );
    let listed = images_json(ns);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["kind"], "file", "{listed}");
    assert!(appliance.built_roots().is_empty());
    let tag = root_image::SMALL_TAG;

    let layout = |name: &str| Layout::copy_of(&appliance.image, &work.join(name));
    let small_manifest = layout("pristine").manifest(tag);
    let layer0 = small_manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut cases: Vec<(&str, String, Vec<String>)> = Vec::new();

    let missing = layout("missing");
    fs::remove_file(missing.blob(&layer0)).expect("remove a layer");
    cases.push((
        "missing blob",
        missing.source(tag),
        vec!["is missing from".into(), layer0.clone()],
    ));

    let corrupt = layout("corrupt");
    let mut bytes = fs::read(corrupt.blob(&layer0)).expect("layer");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(corrupt.blob(&layer0), &bytes).expect("corrupt layer");
    cases.push((
        "digest mismatch",
        corrupt.source(tag),
        vec![
            "digest mismatch".into(),
            layer0.clone(),
            format!("sha256:{}", sha256_hex(&bytes)),
        ],
    ));

    // Before any layer is in the blob cache: a cached, verified blob is not read again.
    let truncated = work.join("truncated.oci.tar");
    fs::copy(&appliance.archive, &truncated).expect("copy archive");
    truncate_in_largest_member(&truncated);
    cases.push((
        "truncated archive",
        format!("oci-archive:{}", truncated.display()),
        vec!["truncated archive".into()],
    ));

    let media = layout("media");
    let mut manifest = small_manifest.clone();
    manifest["layers"][1]["mediaType"] =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip".into();
    media.put_image("foreign", manifest, &media.config(&small_manifest));
    cases.push((
        "unsupported media type",
        media.source("foreign"),
        vec!["unsupported media type".into(), "nondistributable".into()],
    ));

    let arm = layout("arm");
    let mut config = arm.config(&small_manifest);
    config["architecture"] = "arm64".into();
    arm.put_image("arm", small_manifest.clone(), &config);
    cases.push((
        "another architecture",
        arm.source("arm"),
        vec![
            "architecture mismatch".into(),
            "arm64".into(),
            "amd64".into(),
        ],
    ));

    // These pull (and cache) the good layers, then fail while flattening.
    let escape = layout("escape");
    escape.with_layer(
        "escape",
        &[
            TarMember::File("etc/fine", b"fine\n"),
            TarMember::File("../../etc/passwd", b"root::0:0::/:/bin/sh\n"),
        ],
    );
    cases.push((
        "entry out of the root",
        escape.source("escape"),
        vec!["escapes the root".into(), "\"../../etc/passwd\"".into()],
    ));

    let hardlink = layout("hardlink");
    hardlink.with_layer(
        "hardlink",
        &[
            TarMember::File("etc/fine", b"fine\n"),
            TarMember::HardLink("etc/shadow-copy", "../../etc/shadow"),
        ],
    );
    cases.push((
        "hard link out of the root",
        hardlink.source("hardlink"),
        vec!["escapes the root".into(), "\"etc/shadow-copy\"".into()],
    ));

    for (i, (what, source, needles)) in cases.iter().enumerate() {
        let name = format!("bad-{i}");
        let out = appliance.import(source, &name);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(!out.status.success(), "{what}: imported: {text}");
        assert!(
            out.stderr.contains("failed: "),
            "{what}: ctl says the import failed: {text}"
        );
        for needle in needles {
            assert!(
                text.contains(needle.as_str()),
                "{what}: no {needle:?} in: {text}"
            );
        }
        assert_eq!(images_json(ns), listed, "{what}: nothing recorded");
        assert!(
            appliance.built_roots().is_empty(),
            "{what}: no root written"
        );
    }

    // Still serving: the API answers, and the good image imports and is served.
    let health = ns
        .run(
            "curl",
            &["-sf", &format!("{API}/api/v1/health")],
            Duration::from_secs(5),
        )
        .expect("curl");
    assert!(health.stdout.contains("\"ok\""), "{}", health.stdout);
    let small = appliance.import_small();
    let built = appliance.built_roots();
    assert_eq!(built, [small["sha256"].as_str().unwrap()], "one root built");
    let manifest_url = format!(
        "http://{}:8080/roots/{}/manifest",
        appliance.lab.server_ip(),
        built[0]
    );
    let served = ns
        .run(
            "curl",
            &["-sf", "-o", "/dev/null", &manifest_url],
            Duration::from_secs(5),
        )
        .expect("curl");
    assert!(served.status.success(), "{manifest_url}: {}", served.stderr);
    let imports = ctl(ns, &["images", "imports"]);
    assert_eq!(
        imports.lines().filter(|l| l.contains(" failed ")).count(),
        cases.len(),
        "{imports}"
    );

    // Forgotten: the state no longer lists it. Its files were written minutes ago, within
    // the grace period that protects roots being built and not yet recorded: they stay.
    let removed = ctl(ns, &["images", "rm", "small"]);
    assert!(removed.contains("image small removed"), "{removed}");
    assert_eq!(images_json(ns), listed, "back to the plain image alone");
    assert_eq!(
        appliance.built_roots(),
        built,
        "young files are left in place"
    );
    // Two hours later (the files' times moved back), the next removal collects the root and
    // its chunks: nothing recorded names them.
    let serve = appliance.state_dir().join("roots/serve");
    let aged = Command::new("find")
        .arg(&serve)
        .args(["-exec", "touch", "-h", "-d", "2 hours ago", "{}", "+"])
        .status()
        .expect("find");
    assert!(aged.success());
    let plain_sha256 = listed[0]["sha256"]
        .as_str()
        .expect("the plain image's sha256");
    ctl(ns, &["images", "rm", plain_sha256]);
    assert!(
        appliance.built_roots().is_empty(),
        "the forgotten root's files are collected: {:?}",
        appliance.built_roots()
    );
    let chunks = fs::read_dir(serve.join("chunks"))
        .expect("chunks dir")
        .count();
    assert_eq!(chunks, 0, "and its chunks");
    stop(appliance.server);
}

/// The script `ns` gets for a machine of `mac` from the appliance at `base`, as iPXE fetches it.
fn script_for(ns: &Netns, base: &str, mac: &str, scratch: &Path) -> String {
    let probe = String::from_utf8(fetch(
        ns,
        &format!("{base}/boot.ipxe?mac={}", mac.replace(':', "-")),
        scratch,
    ))
    .expect("text");
    let chain = probe
        .lines()
        .find_map(|l| l.strip_prefix("chain "))
        .unwrap_or_else(|| panic!("no chain line: {probe}"))
        .replace("${platform}", "pcbios")
        .replace("${buildarch}", "i386")
        .replace("${ip}", "198.18.0.99");
    String::from_utf8(fetch(ns, &chain, scratch)).expect("text")
}

#[test]
fn a_file_profile_names_a_root_at_start_and_reload() {
    if !require!(PROGRAMS) {
        return;
    }
    let appliance = Appliance::start();
    let small = appliance.import_small();
    let id = small["sha256"].as_str().unwrap().to_owned();
    let Appliance {
        server,
        lab,
        payload,
        ..
    } = appliance;
    stop(server);
    let dir = payload.dir.path();
    let scratch = dir.join("scratch");
    fs::create_dir_all(&scratch).expect("scratch dir");
    let config = dir.join("stampede.toml");
    let write = |root: &str| {
        let text = format!(
            "[server]\ninterfaces = [\"{}\"]\n\
             [boot]\nfiles = {{ \"vmlinuz\" = \"{}\" }}\ndefault_profile = \"diskless\"\n\
             [[profiles]]\nname = \"plain\"\nkernel = \"vmlinuz\"\n\
             [[profiles]]\nname = \"diskless\"\nroot = \"{root}\"\ncmdline = \"console=ttyS0\"\n\
             [xdp]\nmode = \"off\"\n",
            lab.server_if,
            payload.kernel.display(),
        );
        fs::write(&config, text).expect("write config");
    };
    let serve = || {
        let command = serve_command(&lab.server, &config, dir);
        Process::spawn(command).expect("serve")
    };

    // A root nobody imported: the start fails, naming the profile and the root.
    write("ghost");
    let out = serve()
        .wait_output(Duration::from_secs(30))
        .expect("serve exits");
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains("\"diskless\"") && out.stderr.contains("\"ghost\""),
        "{}",
        out.stderr
    );

    // The imported one, by name: the file's profile boots the root.
    write("small");
    let server = serve();
    wait_for_api(&lab.server);
    let base = format!("http://{}:8080", lab.server_ip());
    let mac = "52:54:00:12:34:56";
    let manifest =
        format!("stampede.manifest={base}/roots/{id}/manifest BOOTIF=01-52-54-00-12-34-56");
    let script = script_for(&lab.server, &base, mac, &scratch);
    assert!(
        script.contains(&format!("kernel {base}/files/roots/{id}/vmlinuz"))
            && script.contains(&format!("console=ttyS0 {manifest}")),
        "{script}"
    );

    // A reload naming an unknown root is refused; the running plan stays.
    write("ghost");
    server
        .signal(nix::sys::signal::Signal::SIGHUP)
        .expect("SIGHUP");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        script_for(&lab.server, &base, mac, &scratch),
        script,
        "the previous plan still serves"
    );
    let (out, _) = stop(server);
    let log = format!("{}{}", out.stdout, out.stderr);
    assert!(
        log.contains("reload refused")
            && log.contains("root \"ghost\"")
            && log.contains("(\"diskless\")"),
        "{log}"
    );
}
