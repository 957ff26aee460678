//! The open-files limit of a herald process (`serve` and `bench`): every connection is a
//! descriptor, and a stock Linux box gives a process 1,024 open files (soft) while
//! allowing far more (hard). Both commands raise the soft limit to the hard one at start,
//! which needs no privilege; only the hard limit needs root to change.

use std::io;

/// `RLIMIT_NOFILE` around a [`raise`]: the soft limit before it, and the soft and hard
/// limits after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub before: u64,
    pub soft: u64,
    pub hard: u64,
}

impl OpenFiles {
    /// Whether the raise changed anything (worth saying once on start).
    pub fn raised(&self) -> bool {
        self.soft > self.before
    }
}

/// Raises the soft open-files limit to the hard limit (or to the most the OS allows a
/// process, which macOS caps below `unlimited`) and says what it was and is.
pub fn raise() -> io::Result<OpenFiles> {
    let (before, _) = current()?;
    let soft = rlimit::increase_nofile_limit(u64::MAX)?;
    let (_, hard) = current()?;
    Ok(OpenFiles { before, soft, hard })
}

/// The (soft, hard) open-files limits of this process.
#[cfg(unix)]
pub fn current() -> io::Result<(u64, u64)> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
}

/// No `RLIMIT_NOFILE` here: nothing limits descriptors the way the checks assume.
#[cfg(not(unix))]
pub fn current() -> io::Result<(u64, u64)> {
    Ok((u64::MAX, u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_lifts_the_soft_limit_to_the_hard_one() {
        // Start below the hard limit, so that a raise that does nothing shows. Low enough
        // to see, high enough for the tests running alongside in this process.
        #[cfg(unix)]
        {
            let (_, hard) = current().unwrap();
            let lower = (hard / 2).clamp(1, 4096);
            rlimit::setrlimit(rlimit::Resource::NOFILE, lower, hard).unwrap();
            assert_eq!(current().unwrap().0, lower);
        }
        let got = raise().unwrap();
        #[cfg(unix)]
        assert!(got.raised() && got.before < got.soft, "{got:?}");
        let (soft, hard) = current().unwrap();
        assert_eq!(
            (got.soft, got.hard),
            (soft, hard),
            "reports what is now in force"
        );
        assert!(got.soft >= got.before);
        // Linux allows the soft limit up to the hard one without privilege.
        #[cfg(target_os = "linux")]
        assert_eq!(soft, hard);
        // A second raise has nothing left to do.
        assert!(!raise().unwrap().raised());
    }
}
