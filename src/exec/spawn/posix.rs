//! The fast path of [`Child::spawn`](super::Child::spawn): `posix_spawn`.
//!
//! glibc (2.24 and later) implements `posix_spawn` with
//! `clone(CLONE_VM | CLONE_VFORK)`: the child runs on the agent's memory
//! until it execs, so no page table is copied and the cost does not grow
//! with the agent's mappings, whereas `fork` (which std's `Command` uses
//! as soon as a `pre_exec` closure is set) copies them all, on the thread
//! that spawns.
//!
//! What the fork path does between fork and exec is said here with file
//! actions and attributes: the pipes moved onto 0, 1 and 2, the protocol
//! socket onto 3 (a `dup2` onto another number leaves the copy without
//! close-on-exec), every other descriptor closed, the working directory,
//! a process group of its own, an empty signal mask and every signal's
//! default disposition (Rust ignores `SIGPIPE` in the agent; an ignored
//! signal would stay ignored across exec). The environment is exactly the
//! spec's, and an exec error comes back as `posix_spawn`'s return value.
//! Resource limits and a user have no file action or attribute: a spec
//! with either takes the fork path.
//!
//! Two of those file actions are GNU extensions, looked up once with
//! `dlsym` rather than linked, so that the agent still builds and runs
//! against an older glibc (and then takes the fork path):
//! `posix_spawn_file_actions_addclosefrom_np` (glibc 2.34), always needed
//! (the agent opens its descriptors close-on-exec, but one left without
//! the flag by a library must not reach a handler), and
//! `posix_spawn_file_actions_addchdir_np` (glibc 2.29), for a `cwd`.

#![allow(unsafe_code)] // posix_spawn and its file actions, dlsym, pipe2, fcntl; each block has a SAFETY note.

use std::ffi::{c_char, c_int, c_void, CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use super::{SpawnError, SpawnSpec, Started, HANDLER_FD};
use crate::config::handlers::Rlimits;

type AddCloseFrom =
    unsafe extern "C" fn(actions: *mut libc::posix_spawn_file_actions_t, from: c_int) -> c_int;
type AddChdir = unsafe extern "C" fn(
    actions: *mut libc::posix_spawn_file_actions_t,
    path: *const c_char,
) -> c_int;

/// The GNU file actions this glibc offers.
struct Extensions {
    closefrom: Option<AddCloseFrom>,
    chdir: Option<AddChdir>,
}

fn extensions() -> &'static Extensions {
    static EXTENSIONS: OnceLock<Extensions> = OnceLock::new();
    EXTENSIONS.get_or_init(|| Extensions {
        // SAFETY: the symbol, when present, is glibc's function of this
        // signature (posix_spawn_file_actions_addclosefrom_np(3)).
        closefrom: lookup(c"posix_spawn_file_actions_addclosefrom_np")
            .map(|f| unsafe { std::mem::transmute::<*mut c_void, AddCloseFrom>(f) }),
        // SAFETY: as above (posix_spawn_file_actions_addchdir_np(3)).
        chdir: lookup(c"posix_spawn_file_actions_addchdir_np")
            .map(|f| unsafe { std::mem::transmute::<*mut c_void, AddChdir>(f) }),
    })
}

fn lookup(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with the default handle and a NUL-terminated name; it
    // returns null when no loaded object defines the symbol.
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!found.is_null()).then_some(found)
}

/// Whether `spec` can be started here: no limits, no user, and the file
/// actions it needs are offered.
pub(super) fn usable(spec: &SpawnSpec) -> bool {
    let offered = extensions();
    spec.rlimits == Rlimits::default()
        && spec.user.is_none()
        && offered.closefrom.is_some()
        && (spec.cwd.is_none() || offered.chdir.is_some())
}

/// A `posix_spawn*` return value (an error number, 0 for success).
fn check(rc: c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

fn c_string(bytes: &OsStr) -> io::Result<CString> {
    CString::new(bytes.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in the program, an argument or the environment",
        )
    })
}

/// File actions, destroyed on drop. Boxed: the object stays where it was
/// initialised.
struct FileActions(Box<libc::posix_spawn_file_actions_t>);

impl FileActions {
    fn new() -> io::Result<FileActions> {
        // SAFETY: all-zero is a valid value of this plain C struct, and
        // init overwrites it.
        let mut actions: Box<libc::posix_spawn_file_actions_t> =
            Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: init of an object we own.
        check(unsafe { libc::posix_spawn_file_actions_init(&mut *actions) })?;
        Ok(FileActions(actions))
    }

    fn dup2(&mut self, fd: RawFd, onto: RawFd) -> io::Result<()> {
        // SAFETY: an initialised object; the action is only recorded here.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut *self.0, fd, onto) })
    }

    fn closefrom(&mut self, add: AddCloseFrom, from: RawFd) -> io::Result<()> {
        // SAFETY: glibc's function (see `extensions`) on an initialised object.
        check(unsafe { add(&mut *self.0, from) })
    }

    fn chdir(&mut self, add: AddChdir, path: &CStr) -> io::Result<()> {
        // SAFETY: glibc's function (see `extensions`) on an initialised
        // object; it copies the path.
        check(unsafe { add(&mut *self.0, path.as_ptr()) })
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: an initialised object, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut *self.0) };
    }
}

/// Spawn attributes, destroyed on drop.
struct Attributes(Box<libc::posix_spawnattr_t>);

impl Attributes {
    /// Its own process group, an empty signal mask, every signal's default
    /// disposition.
    fn new() -> io::Result<Attributes> {
        // SAFETY: all-zero is a valid value of this plain C struct, and
        // init overwrites it.
        let mut attr: Box<libc::posix_spawnattr_t> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: init of an object we own.
        check(unsafe { libc::posix_spawnattr_init(&mut *attr) })?;
        let mut attr = Attributes(attr);
        // SAFETY: sigset_t is a plain C struct, filled in by sigemptyset
        // and sigfillset (which cannot fail on a valid pointer).
        let (mut empty, mut every): (libc::sigset_t, libc::sigset_t) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        // SAFETY: valid pointers to locals.
        unsafe {
            libc::sigemptyset(&mut empty);
            // SIGKILL and SIGSTOP are in it too: the child's sigaction of
            // them fails, which glibc ignores.
            libc::sigfillset(&mut every);
        }
        let flags = libc::POSIX_SPAWN_SETPGROUP
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        let raw: &mut libc::posix_spawnattr_t = &mut attr.0;
        // SAFETY: setters on an initialised object we own, with valid
        // pointers to locals that they copy.
        unsafe {
            check(libc::posix_spawnattr_setflags(raw, flags as libc::c_short))?;
            check(libc::posix_spawnattr_setpgroup(raw, 0))?;
            check(libc::posix_spawnattr_setsigmask(raw, &empty))?;
            check(libc::posix_spawnattr_setsigdefault(raw, &every))?;
        }
        Ok(attr)
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: an initialised object, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut *self.0) };
    }
}

/// A pipe, (read end, write end), both close-on-exec.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [c_int; 2] = [-1; 2];
    // SAFETY: pipe2 into a two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two new descriptors the kernel has just returned, owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fd`, or a close-on-exec copy of it numbered `lowest` or above if it is
/// below: a descriptor the child gets must not be one that an earlier
/// `dup2` of the file actions overwrites.
pub(super) fn at_least(fd: OwnedFd, lowest: RawFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= lowest {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC of an open descriptor; returns a new one or -1.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, lowest) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel has just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Start `spec`, which [`usable`] accepted.
pub(super) fn spawn(spec: &SpawnSpec) -> Result<Started, SpawnError> {
    let start = |source: io::Error| SpawnError::Start {
        program: spec.program.clone(),
        source,
    };
    let program = c_string(spec.program.as_os_str()).map_err(start)?;
    let args = spec
        .args
        .iter()
        .map(|arg| c_string(arg))
        .collect::<io::Result<Vec<_>>>()
        .map_err(start)?;
    let env = spec
        .env
        .iter()
        .map(|(name, value)| {
            let mut pair = name.clone();
            pair.push("=");
            pair.push(value);
            c_string(&pair)
        })
        .collect::<io::Result<Vec<_>>>()
        .map_err(start)?;
    let cwd = spec
        .cwd
        .as_ref()
        .map(|cwd| c_string(cwd.as_os_str()))
        .transpose()
        .map_err(start)?;
    // argv[0] is the program's path, as std's Command gives it.
    let mut argv: Vec<*const c_char> = Vec::with_capacity(args.len() + 2);
    argv.push(program.as_ptr());
    argv.extend(args.iter().map(|arg| arg.as_ptr()));
    argv.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = env.iter().map(|pair| pair.as_ptr()).collect();
    envp.push(std::ptr::null());

    // The child's descriptors: 0, 1, 2 and (pool mode) 3; whatever it is
    // given comes from `first` or above.
    let first = if spec.protocol_fd {
        HANDLER_FD + 1
    } else {
        HANDLER_FD
    };
    let (stdin_theirs, stdin) = pipe().map_err(start)?;
    let (stdout, stdout_theirs) = pipe().map_err(start)?;
    let (stderr, stderr_theirs) = pipe().map_err(start)?;
    let stdin_theirs = at_least(stdin_theirs, first).map_err(start)?;
    let stdout_theirs = at_least(stdout_theirs, first).map_err(start)?;
    let stderr_theirs = at_least(stderr_theirs, first).map_err(start)?;
    let pair = if spec.protocol_fd {
        let (ours, theirs) = UnixStream::pair().map_err(SpawnError::Socket)?;
        let theirs = at_least(theirs.into(), first).map_err(SpawnError::Socket)?;
        Some((ours, theirs))
    } else {
        None
    };

    let offered = extensions();
    let (Some(closefrom), chdir) = (offered.closefrom, offered.chdir) else {
        return Err(start(io::Error::from(io::ErrorKind::Unsupported)));
    };
    let mut actions = FileActions::new().map_err(start)?;
    actions.dup2(stdin_theirs.as_raw_fd(), 0).map_err(start)?;
    actions.dup2(stdout_theirs.as_raw_fd(), 1).map_err(start)?;
    actions.dup2(stderr_theirs.as_raw_fd(), 2).map_err(start)?;
    if let Some((_, theirs)) = &pair {
        actions
            .dup2(theirs.as_raw_fd(), HANDLER_FD)
            .map_err(start)?;
    }
    actions.closefrom(closefrom, first).map_err(start)?;
    if let Some(cwd) = &cwd {
        let chdir = chdir.ok_or_else(|| start(io::Error::from(io::ErrorKind::Unsupported)))?;
        actions.chdir(chdir, cwd).map_err(start)?;
    }
    let attributes = Attributes::new().map_err(start)?;

    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: the path and the
    // NUL-terminated argv and envp arrays point into CStrings that outlive
    // it, and the file actions and attributes are initialised. posix_spawn
    // returns the error number of a failed start, exec included.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            &*actions.0,
            &*attributes.0,
            argv.as_ptr() as *const *mut c_char,
            envp.as_ptr() as *const *mut c_char,
        )
    };
    check(rc).map_err(start)?;
    // The child's ends are closed here (they are dropped with `theirs`),
    // so its exit is seen as end of file on ours.
    drop((stdin_theirs, stdout_theirs, stderr_theirs));
    Ok(Started {
        pid,
        stdin: Some(stdin),
        stdout: Some(stdout),
        stderr: Some(stderr),
        protocol: pair.map(|(ours, _theirs)| ours),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloexec(fd: &OwnedFd) -> bool {
        // SAFETY: F_GETFD on an open descriptor.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert!(flags >= 0);
        flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn a_descriptor_below_the_lowest_is_moved_up_and_stays_close_on_exec() {
        let (read, write) = pipe().unwrap();
        let number = write.as_raw_fd();
        // Already high enough: the same descriptor.
        let write = at_least(write, number).unwrap();
        assert_eq!(write.as_raw_fd(), number);
        // Too low (as a socket that happens to be fd 3 is for a child
        // whose fd 3 comes from a dup2): a copy from `lowest` up.
        let lowest = number + 100;
        let moved = at_least(write, lowest).unwrap();
        assert!(moved.as_raw_fd() >= lowest);
        assert!(cloexec(&moved));
        // Still the same pipe.
        let mut written = std::fs::File::from(moved);
        std::io::Write::write_all(&mut written, b"x").unwrap();
        drop(written);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(read), &mut out).unwrap();
        assert_eq!(out, b"x");
    }
}
