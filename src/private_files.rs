//! Everything costguard writes (the store with tenants, key hashes and
//! sessions; audit files; key files) is its own user's alone: directories
//! 0700, files 0600. New files get that from the process umask (set first
//! thing in `main`); files and directories made by an older version, or by
//! hand, are tightened when their store or log is opened.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Makes every file this process creates from now on private
/// (umask 077: files 0600, directories 0700).
pub fn set_private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Tightens `root` and everything below it: directories to 0700, files to
/// 0600 (removing group and other bits only; symbolic links are not
/// followed). Deep trees stop at 16 levels (ours are at most 3).
pub fn restrict_tree(root: &Path) -> io::Result<()> {
    restrict(root, 16)
}

fn restrict(path: &Path, depth: u8) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    let private = mode & !0o077;
    if private != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(private))?;
    }
    if meta.is_dir() && depth > 0 {
        for entry in fs::read_dir(path)? {
            restrict(&entry?.path(), depth - 1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_and_other_bits_go_away() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        let file = sub.join("f");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        restrict_tree(dir.path()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&file), 0o600);
    }
}
