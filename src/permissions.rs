//! Who may have written the code gmond runs as root.
//!
//! `init` — and with it every module's import and `metric_init` — runs as
//! root, before gmond drops privileges. A module file, or the directory it
//! sits in, that another user can write is therefore a way to become root.
//! The rule is sshd's StrictModes: the file and its directory must belong to
//! root (or gmond's own user) and must not be writable by group or others.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Checks one file or directory against the rule; `Err` says what is wrong
/// and how to fix it.
pub fn check(path: &Path, trusted_uids: &[u32]) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
    let uid = meta.uid();
    if !trusted_uids.contains(&uid) {
        return Err(format!(
            "{} is owned by uid {uid}, not by root or gmond's user, yet gmond imports it as root (chown root {})",
            path.display(),
            path.display()
        ));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Err(format!(
            "{} is writable by {who} (mode {:o}), yet gmond imports it as root (chmod go-w {})",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    Ok(())
}

/// The uids allowed to own module code: root, whoever runs us now (gmond's
/// user after a SIGHUP re-exec) when `include_euid`, and gmond's configured
/// `user`. `modpython-check` leaves its own user out when it judges gmond's
/// configuration: gmond, started as root, would not trust that user.
pub fn trusted_uids(gmond_user: Option<&str>, include_euid: bool) -> Vec<u32> {
    let mut uids = vec![0];
    if include_euid {
        // SAFETY: geteuid has no preconditions and cannot fail.
        uids.push(unsafe { libc::geteuid() });
    }
    if let Some(uid) = gmond_user.and_then(uid_of) {
        uids.push(uid);
    }
    uids.sort_unstable();
    uids.dedup();
    uids
}

fn uid_of(user: &str) -> Option<u32> {
    let name = std::ffi::CString::new(user).ok()?;
    let mut entry: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes only into `entry` and `buf`, whose sizes we
    // pass, and sets `result` to null or to `&entry`.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(entry.pw_uid)
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: passwd is a plain C struct of integers and pointers; all-zero
    // (null pointers) is a valid value that getpwnam_r overwrites.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_or_world_writable_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("modpython-perm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m.py");
        std::fs::write(&file, "").unwrap();
        let me = trusted_uids(None, true);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check(&file, &me).is_ok());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(
            check(&file, &me)
                .unwrap_err()
                .contains("writable by its group")
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o646)).unwrap();
        assert!(
            check(&file, &me)
                .unwrap_err()
                .contains("writable by others")
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check(&file, &[12345]).unwrap_err().contains("owned by uid"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn root_is_always_trusted() {
        assert!(trusted_uids(Some("no-such-user-here"), true).contains(&0));
        assert!(trusted_uids(Some("root"), false).contains(&0));
        assert_eq!(trusted_uids(Some("no-such-user-here"), false), vec![0]);
    }
}
