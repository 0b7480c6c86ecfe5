//! Kernel modules shipped in the initramfs, loaded in the order the appliance listed them.
//!
//! `/stampede/modules` names one module per line, relative to `/`, dependencies first (the
//! appliance resolved them when it built the initramfs, so no `modules.dep` and no `modprobe`):
//!
//! ```text
//! # comment
//! lib/modules/6.1.0-28-amd64/kernel/drivers/net/ethernet/intel/e1000/e1000.ko
//! lib/modules/6.1.0-28-amd64/kernel/drivers/block/brd.ko
//! lib/modules/6.1.0-28-amd64/kernel/fs/overlayfs/overlay.ko redirect_dir=on
//! ```
//!
//! Words after the path are module parameters. `brd` is not loaded with the others: it needs
//! `rd_size`, known only once the manifest says how large the root is.
use std::{
    ffi::CString,
    fs::File,
    path::{Path, PathBuf},
};

use nix::{errno::Errno, kmod::ModuleInitFlags};

/// Where the list lives in the initramfs.
pub const MODULE_LIST: &str = "/stampede/modules";

/// The RAM disk driver, loaded with parameters at assembly time.
pub const RAM_DISK_MODULE: &str = "brd";

/// One line of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    /// Absolute path in the initramfs.
    pub path: PathBuf,
    pub params: String,
}

impl ModuleEntry {
    /// The module's name: the file name without `.ko`, with `-` read as `_` as the kernel does.
    pub fn name(&self) -> String {
        let file = self
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        file.strip_suffix(".ko").unwrap_or(&file).replace('-', "_")
    }
}

/// Parses the list: blank lines and `#` comments skipped, paths taken relative to `/`.
pub fn parse_list(text: &str) -> Vec<ModuleEntry> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (path, params) = line
                .split_once(char::is_whitespace)
                .map_or((line, ""), |(p, rest)| (p, rest.trim()));
            ModuleEntry {
                path: Path::new("/").join(path.trim_start_matches('/')),
                params: params.to_owned(),
            }
        })
        .collect()
}

/// The list split into what loads at start and the RAM disk driver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulePlan {
    pub early: Vec<ModuleEntry>,
    pub ram_disk: Option<ModuleEntry>,
}

pub fn plan(entries: Vec<ModuleEntry>) -> ModulePlan {
    let mut plan = ModulePlan::default();
    for entry in entries {
        if entry.name() == RAM_DISK_MODULE {
            plan.ram_disk = Some(entry);
        } else {
            plan.early.push(entry);
        }
    }
    plan
}

/// What loading one module did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    Now,
    /// `EEXIST`: built in, or loaded by an earlier attempt.
    Already,
}

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading {path}: {errno}")]
    Load { path: PathBuf, errno: Errno },
    #[error("module parameters {0:?} contain a NUL byte")]
    Params(String),
}

/// Loads one module with `finit_module(2)` (the one place the agent loads modules).
pub fn load(entry: &ModuleEntry, extra_params: &str) -> Result<Loaded, ModuleError> {
    let file = File::open(&entry.path).map_err(|source| ModuleError::Open {
        path: entry.path.clone(),
        source,
    })?;
    let params = [entry.params.as_str(), extra_params]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let c_params = CString::new(params.clone()).map_err(|_| ModuleError::Params(params))?;
    match nix::kmod::finit_module(&file, &c_params, ModuleInitFlags::empty()) {
        Ok(()) => Ok(Loaded::Now),
        Err(Errno::EEXIST) => Ok(Loaded::Already),
        Err(errno) => Err(ModuleError::Load {
            path: entry.path.clone(),
            errno,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_skips_comments_and_keeps_order_and_params() {
        let list = parse_list(
            "# built by the appliance\n\n\
             lib/modules/6.1/kernel/lib/libcrc32c.ko\n\
             /lib/modules/6.1/kernel/fs/erofs/erofs.ko\n\
             lib/modules/6.1/kernel/drivers/block/brd.ko\n  \
             lib/modules/6.1/kernel/fs/overlayfs/overlay.ko  redirect_dir=on  index=off \n\
             lib/modules/6.1/kernel/arch/x86/crypto/crc32c-intel.ko\n",
        );
        let names: Vec<String> = list.iter().map(ModuleEntry::name).collect();
        assert_eq!(
            names,
            ["libcrc32c", "erofs", "brd", "overlay", "crc32c_intel"]
        );
        assert_eq!(
            list[1].path,
            Path::new("/lib/modules/6.1/kernel/fs/erofs/erofs.ko")
        );
        assert_eq!(list[3].params, "redirect_dir=on  index=off");
        let plan = plan(list);
        assert_eq!(plan.early.len(), 4);
        assert_eq!(plan.ram_disk.map(|e| e.name()).as_deref(), Some("brd"));
    }

    #[test]
    fn a_missing_module_file_names_its_path() {
        let entry = ModuleEntry {
            path: "/nonexistent/x.ko".into(),
            params: String::new(),
        };
        let err = load(&entry, "").expect_err("no such file");
        assert!(err.to_string().contains("/nonexistent/x.ko"), "{err}");
    }
}
