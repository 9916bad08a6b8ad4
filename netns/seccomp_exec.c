/*
 * seccomp-exec: run a command under a seccomp filter that refuses what a devbox has no use
 * for and what reaches past its network namespace or leaks between uids.
 *
 *   seccomp-exec [--] COMMAND [ARG...]
 *   seccomp-exec --init [--] COMMAND [ARG...]
 *
 * Part of the netns sandbox's exec chain (netns/sandbox.py): nsenter -> seccomp-exec (still
 * root) -> setpriv (uid, no caps, no_new_privs) -> env -> the command. The Docker runtime stacks it on
 * docker's own profile: each exec'd command starts through it, and with --init it is the
 * container's pid 1 (in place of docker's init): it installs the filter, runs COMMAND as its
 * child, reaps every orphan, passes on SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2,
 * and exits as COMMAND does - so no process in the container is unfiltered.
 * The filter is inherited by everything the command runs.
 *
 * No process of a devbox may ever run unfiltered as the devbox's uid: another process of that
 * uid could ptrace it (or write its /proc/PID/mem) in the instant before the filter is on and
 * use its syscalls. On netns it starts as root, which they cannot trace. In a Docker
 * container it starts as the image's user; installed mode 0111 (scripts/bootstrap.sh), it
 * cannot be read there, and the kernel makes a process that runs a program it cannot read
 * not dumpable (measured through docker exec: dumpable 0; 1 with mode 0755).
 *
 * Refused (an errno, never a kill, so programs can fall back):
 *   - socket(AF_VSOCK): vsock reaches the hypervisor and host whatever the network namespace
 *     and the firewall say; socket(AF_ALG): kernel crypto, not needed, long a bug source.
 *   - add_key, request_key, keyctl: kernel keyrings are kept per uid, outside any namespace.
 *   - unshare/clone with CLONE_NEWUSER, and clone3 (ENOSYS: libc falls back to clone, whose
 *     flags the filter can read): user namespaces open kernel code to unprivileged users.
 *   - io_uring_*, bpf, userfaultfd, perf_event_open: large kernel attack surface.
 *   - every syscall of another ABI (i386 through int 0x80, x32): the numbers above are the
 *     native ones only.
 * If the filter cannot be installed the command does not run (exit 126): fail closed.
 * Built by scripts/bootstrap.sh into /usr/local/libexec/devbox-sim/seccomp-exec.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#else
#error "seccomp-exec supports x86_64 and aarch64"
#endif

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#ifndef AF_ALG
#define AF_ALG 38
#endif

#define LOAD(field) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, field))
#define RET(value) BPF_STMT(BPF_RET | BPF_K, (value))
#define ERRNO(e) RET(SECCOMP_RET_ERRNO | ((e) & SECCOMP_RET_DATA))
/* nr == n: return ERRNO(e); otherwise go on */
#define REFUSE(n, e) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (n), 0, 1), ERRNO(e)
/* nr == n: refuse if the low word of arg0 has a bit of mask, else allow (3 instructions follow) */
#define REFUSE_FLAG(n, mask, e) \
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (n), 0, 4), LOAD(args[0]), \
    BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, (mask), 0, 1), ERRNO(e), RET(SECCOMP_RET_ALLOW)

static struct sock_filter filter[] = {
    LOAD(arch),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 1, 0),
    ERRNO(ENOSYS),
    LOAD(nr),
#if defined(__x86_64__)
    BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1), /* x32 */
    ERRNO(ENOSYS),
#endif
    REFUSE(__NR_add_key, EPERM),
    REFUSE(__NR_request_key, EPERM),
    REFUSE(__NR_keyctl, EPERM),
    REFUSE(__NR_io_uring_setup, ENOSYS),
    REFUSE(__NR_io_uring_enter, ENOSYS),
    REFUSE(__NR_io_uring_register, ENOSYS),
    REFUSE(__NR_bpf, EPERM),
    REFUSE(__NR_userfaultfd, EPERM),
    REFUSE(__NR_perf_event_open, EPERM),
#ifdef __NR_clone3
    REFUSE(__NR_clone3, ENOSYS),
#endif
    REFUSE_FLAG(__NR_unshare, CLONE_NEWUSER, EPERM),
    REFUSE_FLAG(__NR_clone, CLONE_NEWUSER, EPERM),
    /* socket(domain, ...): AF_VSOCK and AF_ALG refused */
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 0, 5),
    LOAD(args[0]),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_VSOCK, 2, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_ALG, 1, 0),
    RET(SECCOMP_RET_ALLOW),
    ERRNO(EAFNOSUPPORT),
    RET(SECCOMP_RET_ALLOW),
};

static volatile sig_atomic_t child; /* COMMAND's pid once known, 0 before and after */

static void pass_on(int sig) {
    int saved = errno;
    if (child > 0)
        kill((pid_t)child, sig);
    errno = saved;
}

/* After a failed exec: say why, and the exit status a shell would give (127: not found). */
static int exec_failed(const char *name) {
    int err = errno;
    fprintf(stderr, "seccomp-exec: %s: %s\n", name, strerror(err));
    return err == ENOENT ? 127 : 126;
}

/* pid 1 of a container: COMMAND as a child, every orphan reaped; COMMAND's exit is ours. */
static int run_as_init(char **argv) {
    static const int passed[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    const size_t n = sizeof(passed) / sizeof(passed[0]);
    sigset_t forwarded, none;
    sigemptyset(&forwarded);
    sigemptyset(&none);
    for (size_t i = 0; i < n; i++)
        sigaddset(&forwarded, passed[i]);
    /* Held until COMMAND's pid is known, so a signal sent at once is passed on, not lost. */
    sigprocmask(SIG_BLOCK, &forwarded, NULL);
    struct sigaction sa, dfl;
    memset(&sa, 0, sizeof(sa));
    memset(&dfl, 0, sizeof(dfl));
    sa.sa_handler = pass_on;
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGCHLD, &dfl, NULL); /* an inherited SIG_IGN would reap for us and hide COMMAND's exit */
    for (size_t i = 0; i < n; i++)
        sigaction(passed[i], &sa, NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "seccomp-exec: fork: %s\n", strerror(errno));
        return 126;
    }
    if (pid == 0) {
        /* COMMAND starts with default dispositions and nothing blocked, as under any init. */
        for (size_t i = 0; i < n; i++)
            sigaction(passed[i], &dfl, NULL);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execvp(argv[0], argv);
        _exit(exec_failed(argv[0]));
    }
    child = pid;
    sigprocmask(SIG_UNBLOCK, &forwarded, NULL);
    for (;;) {
        int status;
        pid_t done = wait(&status);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            return 126; /* ECHILD: cannot happen while COMMAND is ours to wait for */
        }
        if (done == pid) {
            child = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
    }
}

int main(int argc, char **argv) {
    int first = 1, init = 0;
    if (first < argc && strcmp(argv[first], "--init") == 0) {
        init = 1;
        first++;
    }
    if (first < argc && strcmp(argv[first], "--") == 0)
        first++;
    if (first >= argc) {
        fprintf(stderr, "usage: seccomp-exec [--init] [--] COMMAND [ARG...]\n");
        return 126;
    }
    struct sock_fprog prog = {.len = sizeof(filter) / sizeof(filter[0]), .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        fprintf(stderr, "seccomp-exec: cannot install the filter: %s\n", strerror(errno));
        return 126;
    }
    if (init)
        return run_as_init(argv + first);
    execvp(argv[first], argv + first);
    return exec_failed(argv[first]);
}
