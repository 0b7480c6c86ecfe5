//! The catalogs: the files one protocol serves, from the configured loader names in the iPXE
//! directory and from the boot root.
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use stampede_proto::bootpath::BootPath;
use stampede_proto::files::{BootFile, FileCatalog, OpenError};

use super::{FILES_PREFIX, ScriptRoute, SharedCatalog, is_root_path};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Namespace {
    /// Loader names, else the boot root at its own paths.
    Tftp,
    /// Loader names, and the boot root under [`FILES_PREFIX`].
    Http,
}

/// The files one protocol serves: the configured loader names from the iPXE directory, and the
/// boot root (at its own paths for TFTP, under `/files/` for HTTP).
#[derive(Clone)]
pub struct BootCatalog {
    pub(super) namespace: Namespace,
    pub(super) loaders: Arc<HashSet<BootPath>>,
    pub(super) ipxe: SharedCatalog,
    pub(super) root: SharedCatalog,
    /// Renders the GRUB configurations of Secure Boot machines.
    pub(super) scripts: ScriptRoute,
}

impl fmt::Debug for BootCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootCatalog")
            .field("namespace", &self.namespace)
            .field("loaders", &self.loaders)
            .finish_non_exhaustive()
    }
}

impl FileCatalog for BootCatalog {
    fn open(&self, path: &BootPath) -> Result<BootFile, OpenError> {
        if self.loaders.contains(path) {
            return self.ipxe.open(path);
        }
        if let Some(grub) = self.scripts.grub_config(path) {
            return grub;
        }
        match self.namespace {
            Namespace::Tftp => self.root.open(path),
            Namespace::Http if is_root_path(path) => self.root.open(path),
            Namespace::Http => {
                let rest = path
                    .as_str()
                    .strip_prefix(FILES_PREFIX)
                    .ok_or(OpenError::NotFound)?;
                let inner = BootPath::parse(rest.as_bytes()).map_err(|_| OpenError::NotFound)?;
                self.root.open(&inner)
            }
        }
    }
}
