/*
 * sandboxd-agent: the init process of a sandbox.
 *
 * It runs inside gVisor as uid 0 with only CAP_SETUID, CAP_SETGID,
 * CAP_SETPCAP and CAP_KILL, so that the program it starts (as uid 65534, with
 * no capabilities at all) can neither signal, trace nor impersonate it. It reads
 * commands from the daemon on stdin and answers on stdout; both are FIFOs on
 * the host that nothing in the sandbox can reach. Starting a process here is a
 * fork and exec inside the sandbox, instead of a `runsc exec` through
 * containerd's shim (two runsc start-ups), which is what makes a pre-booted
 * sandbox fast.
 *
 * Frames, both ways: one type byte, a big-endian u32 length, the payload.
 *   daemon -> agent
 *     'x'  run: u32 argc, u32 envc, u32 uid, u32 gid, u32 flags, then argc + envc + 1
 *          NUL-terminated strings (arguments, environment, working directory).
 *          Flag 1 (status pipe): the process gets the write end of a pipe as fd 3, for
 *          what a runtime's own check reports (a program that does not parse, say); an
 *          exit status cannot say that, since every status 0-255 is the program's own.
 *     'i'  bytes for the process's stdin
 *     'c'  end of stdin (always sent once per 'x', after its stdin)
 *     'q'  exit (between processes only): the sandbox ends with its init
 *   agent -> daemon
 *     'r'  ready (once, at start), payload: protocol version
 *     'o'  bytes the process wrote to stdout
 *     'e'  bytes the process wrote to stderr
 *     'f'  the process could not be started: payload is the reason
 *     's'  what the process wrote to its status pipe (at most MAX_STATUS bytes, the rest
 *          dropped); sent once, before 'x', only with flag 1 and when it wrote anything
 *     'x'  the process ended: u32 exit status (128 + signal when killed)
 * One process runs at a time; the daemon waits for its 'x' before the next.
 *
 * Run as `sandboxd-agent collect MAX_FILES MAX_BYTES PATTERN...` (by the agent itself, as
 * the program's user, once the program ended), it writes to stdout the regular files under
 * the working directory that the glob PATTERNs match, each as one record of a type byte, a
 * big-endian u32 name length, the name, a u32 length and that many bytes:
 *   'F'  a file and its content
 *   'S'  a file that is not returned, the payload says why
 * Every path is opened one component at a time with O_NOFOLLOW: it never leaves the
 * working directory, whatever links the program made.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL "sandboxd-agent 2"
#define MAX_COMMAND (1u << 20)
#define MAX_STDIN_FRAME (1u << 16)
#define CHUNK (1u << 15)
#define OUTPUT_GRACE_MS 1000
#define CAP_LAST 63
#define FLAG_STATUS_PIPE 1u
#define STATUS_FD 3
#define MAX_STATUS 64

static int sigchld_pipe[2];

static void die(const char *what) {
    dprintf(2, "sandboxd-agent: %s: %s\n", what, strerror(errno));
    _exit(111);
}

static void write_all(int fd, const void *data, size_t size) {
    const char *p = data;
    while (size > 0) {
        ssize_t n = write(fd, p, size);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                poll(&pfd, 1, -1);
                continue;
            }
            die("writing to the daemon");
        }
        p += n;
        size -= (size_t)n;
    }
}

static void send_frame(char type, const void *payload, uint32_t size) {
    unsigned char header[5] = {(unsigned char)type, size >> 24, size >> 16, size >> 8, size};
    write_all(1, header, sizeof header);
    if (size) write_all(1, payload, size);
}

static void send_u32(char type, uint32_t value) {
    unsigned char payload[4] = {value >> 24, value >> 16, value >> 8, value};
    send_frame(type, payload, 4);
}

/* Reads exactly size bytes from the daemon; returns 0 on a clean end of input before any byte. */
static int read_exact(void *buffer, size_t size) {
    char *p = buffer;
    size_t done = 0;
    while (done < size) {
        ssize_t n = read(0, p + done, size - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("reading from the daemon");
        }
        if (n == 0) {
            if (done == 0) return 0;
            errno = EPROTO;
            die("truncated frame");
        }
        done += (size_t)n;
    }
    return 1;
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Reads one frame; its payload is malloc'd (NUL-terminated). Exits on end of input. */
static char read_frame(char **payload, uint32_t *size) {
    unsigned char header[5];
    if (!read_exact(header, sizeof header)) exit(0);
    *size = be32(header + 1);
    uint32_t limit = header[0] == 'x' ? MAX_COMMAND : MAX_STDIN_FRAME;
    if (*size > limit) {
        errno = EMSGSIZE;
        die("frame too large");
    }
    *payload = malloc(*size + 1);
    if (!*payload) die("malloc");
    if (*size && !read_exact(*payload, *size)) {
        errno = EPROTO;
        die("truncated frame");
    }
    (*payload)[*size] = 0;
    return (char)header[0];
}

static void on_sigchld(int signo) {
    (void)signo;
    int saved = errno;
    (void)write(sigchld_pipe[1], "", 1);
    errno = saved;
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct command {
    char **argv;
    char **envp;
    const char *cwd;
    uid_t uid;
    gid_t gid;
    uint32_t flags;
};

static int parse_command(char *payload, uint32_t size, struct command *command) {
    if (size < 20) return -1;
    uint32_t argc = be32((unsigned char *)payload), envc = be32((unsigned char *)payload + 4);
    command->uid = be32((unsigned char *)payload + 8);
    command->gid = be32((unsigned char *)payload + 12);
    command->flags = be32((unsigned char *)payload + 16);
    if (argc == 0 || argc > MAX_COMMAND || envc > MAX_COMMAND || command->uid == 0) return -1;
    if (command->flags & ~FLAG_STATUS_PIPE) return -1;
    char **strings = calloc((size_t)argc + envc + 3, sizeof *strings);
    if (!strings) die("calloc");
    char *p = payload + 20, *end = payload + size;
    for (uint32_t i = 0; i < argc + envc + 1; i++) {
        char *nul = memchr(p, 0, (size_t)(end - p));
        if (!nul) return -1;
        strings[i + (i >= argc ? 1 : 0)] = p;
        p = nul + 1;
    }
    command->argv = strings;              /* argv[argc] stays NULL */
    command->envp = strings + argc + 1;   /* envp[envc] is the cwd, moved out below */
    command->cwd = command->envp[envc];
    command->envp[envc] = NULL;
    return 0;
}

static void set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) die("fcntl");
}

/* Makes fd `from` the process's fd `to`, open across exec. */
static int give_fd(int from, int to) {
    if (from == to) return fcntl(to, F_SETFD, 0);
    return dup2(from, to) < 0 ? -1 : 0;
}

/* In the child: become the unprivileged user for good, then exec. Never returns. */
static void become_and_exec(const struct command *command, int in, int out, int err, int status, int report) {
    /* Every pipe end is above 3 (the agent's own stdio and its SIGCHLD pipe come first). */
    if (give_fd(in, 0) < 0 || give_fd(out, 1) < 0 || give_fd(err, 2) < 0) goto fail;
    if (status >= 0 && give_fd(status, STATUS_FD) < 0) goto fail;
    for (int cap = 0; cap <= CAP_LAST; cap++) prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
    gid_t groups[1] = {command->gid};
    if (setgroups(1, groups) < 0 || setresgid(command->gid, command->gid, command->gid) < 0 ||
        setresuid(command->uid, command->uid, command->uid) < 0)
        goto fail;
    if (chdir(command->cwd) < 0) goto fail;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    environ = command->envp;  /* execvp searches the program's own PATH */
    execvp(command->argv[0], command->argv);
fail:;
    int code = errno;
    (void)write(report, &code, sizeof code);
    _exit(127);
}

struct stream {
    int fd;
    char type;
};

/*
 * The process's stdio pipes belong to its user, so that it can open them again by
 * path (/dev/stdin, /proc/self/fd/0), as programs do: they are made with that
 * effective user and group, and the agent takes root back afterwards.
 */
static void make_stdio_pipes(const struct command *command, int in[2], int out[2], int err[2], int status[2]) {
    if (setresgid((gid_t)-1, command->gid, (gid_t)-1) < 0 || setresuid((uid_t)-1, command->uid, (uid_t)-1) < 0)
        die("taking the program's user to make its pipes");
    /* The status pipe too: a check written in a language without descriptor I/O opens /proc/self/fd/3. */
    int failed = pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) ||
                 ((command->flags & FLAG_STATUS_PIPE) && pipe2(status, O_CLOEXEC));
    if (setresuid((uid_t)-1, 0, (uid_t)-1) < 0 || setresgid((gid_t)-1, 0, (gid_t)-1) < 0)
        die("taking root back");
    if (failed) die("pipe");
}

static void run(const struct command *command) {
    int in[2], out[2], err[2], status_pipe[2] = {-1, -1}, report[2];
    make_stdio_pipes(command, in, out, err, status_pipe);
    if (pipe2(report, O_CLOEXEC)) die("pipe");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) become_and_exec(command, in[0], out[1], err[1], status_pipe[1], report[1]);
    close(in[0]);
    close(out[1]);
    close(err[1]);
    if (status_pipe[1] >= 0) close(status_pipe[1]);
    close(report[1]);
    int code;
    ssize_t got = read(report[0], &code, sizeof code);
    close(report[0]);
    int started = got != (ssize_t)sizeof code;

    int child_in = in[1];
    set_nonblocking(child_in);
    /* The status pipe is read like an output, but what it says is kept for one frame. */
    struct stream streams[3] = {{out[0], 'o'}, {err[0], 'e'}, {status_pipe[0], 's'}};
    char status[MAX_STATUS];
    uint32_t status_size = 0;
    char *pending = NULL;
    uint32_t pending_size = 0, pending_done = 0;
    int stdin_closed = 0, exited = 0, wait_status = 0;
    long exited_at = 0;
    char buffer[CHUNK];

    for (;;) {
        if (!exited) {
            char drain[64];
            while (read(sigchld_pipe[0], drain, sizeof drain) > 0) {}
            pid_t done = waitpid(pid, &wait_status, WNOHANG);
            if (done == pid) {
                exited = 1;
                exited_at = now_ms();
            }
        }
        int outputs_open = streams[0].fd >= 0 || streams[1].fd >= 0 || streams[2].fd >= 0;
        if (exited && (!outputs_open || now_ms() - exited_at >= OUTPUT_GRACE_MS)) break;

        struct pollfd fds[6];
        int n = 0, at_daemon = -1, at_child_in = -1, at_stream[3] = {-1, -1, -1};
        fds[n] = (struct pollfd){.fd = sigchld_pipe[0], .events = POLLIN};
        n++;
        if (!stdin_closed && pending == NULL) {
            at_daemon = n;
            fds[n++] = (struct pollfd){.fd = 0, .events = POLLIN};
        }
        if (pending != NULL && child_in >= 0) {
            at_child_in = n;
            fds[n++] = (struct pollfd){.fd = child_in, .events = POLLOUT};
        }
        for (int s = 0; s < 3; s++) {
            if (streams[s].fd >= 0) {
                at_stream[s] = n;
                fds[n++] = (struct pollfd){.fd = streams[s].fd, .events = POLLIN};
            }
        }
        int timeout = exited ? (int)(OUTPUT_GRACE_MS - (now_ms() - exited_at)) : -1;
        if (poll(fds, (nfds_t)n, timeout < 0 && exited ? 0 : timeout) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        for (int s = 0; s < 3; s++) {
            if (at_stream[s] >= 0 && fds[at_stream[s]].revents) {
                ssize_t r = read(streams[s].fd, buffer, sizeof buffer);
                if (r > 0 && streams[s].type == 's') {
                    uint32_t room = MAX_STATUS - status_size, kept = (uint32_t)r < room ? (uint32_t)r : room;
                    memcpy(status + status_size, buffer, kept);
                    status_size += kept;
                } else if (r > 0) {
                    send_frame(streams[s].type, buffer, (uint32_t)r);
                } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
                    close(streams[s].fd);
                    streams[s].fd = -1;
                }
            }
        }
        if (at_child_in >= 0 && fds[at_child_in].revents) {
            ssize_t w = write(child_in, pending + pending_done, pending_size - pending_done);
            if (w > 0) pending_done += (uint32_t)w;
            if ((w < 0 && errno != EAGAIN && errno != EINTR) || pending_done == pending_size) {
                if (w < 0) { close(child_in); child_in = -1; }  /* the process closed its stdin */
                free(pending);
                pending = NULL;
            }
        }
        if (at_daemon >= 0 && fds[at_daemon].revents) {
            char *payload;
            uint32_t size;
            char type = read_frame(&payload, &size);
            if (type == 'i') {
                if (child_in >= 0 && size > 0) {
                    pending = payload;
                    pending_size = size;
                    pending_done = 0;
                    continue;
                }
            } else if (type == 'c') {
                stdin_closed = 1;
            } else {
                errno = EPROTO;
                die("unexpected frame while a process runs");
            }
            free(payload);
        }
        if (stdin_closed && pending == NULL && child_in >= 0) {
            close(child_in);
            child_in = -1;
        }
    }
    for (int s = 0; s < 3; s++)
        if (streams[s].fd >= 0) close(streams[s].fd);
    if (child_in >= 0) close(child_in);
    free(pending);
    /* Whatever stdin the daemon still sends for this process is dropped. */
    while (!stdin_closed) {
        char *payload;
        uint32_t size;
        char type = read_frame(&payload, &size);
        if (type == 'c') stdin_closed = 1;
        else if (type != 'i') { errno = EPROTO; die("unexpected frame after a process ended"); }
        free(payload);
    }
    if (!started) {
        const char *reason = strerror(code);
        char message[512];
        int length = snprintf(message, sizeof message, "%s: %s", command->argv[0], reason);
        send_frame('f', message, (uint32_t)(length < 0 ? 0 : length >= (int)sizeof message ? (int)sizeof message - 1 : length));
        send_u32('x', code == ENOENT ? 127 : 126);
        return;
    }
    if (status_size > 0) send_frame('s', status, status_size);
    uint32_t exit_status = WIFEXITED(wait_status) ? (uint32_t)WEXITSTATUS(wait_status) : 128u + (uint32_t)WTERMSIG(wait_status);
    send_u32('x', exit_status);
}

static void send_record(char type, const char *name, const void *data, uint32_t size) {
    uint32_t length = (uint32_t)strlen(name);
    unsigned char header[5] = {(unsigned char)type, length >> 24, length >> 16, length >> 8, length};
    unsigned char data_length[4] = {size >> 24, size >> 16, size >> 8, size};
    write_all(1, header, sizeof header);
    write_all(1, name, length);
    write_all(1, data_length, sizeof data_length);
    if (size) write_all(1, data, size);
}

static void skip_file(const char *name, const char *reason) {
    send_record('S', name, reason, (uint32_t)strlen(reason));
}

/*
 * Opens name in dir unless it is a link. O_NOFOLLOW alone does not do it: gVisor follows a
 * link to a directory opened with O_DIRECTORY | O_NOFOLLOW. So the entry is looked at first,
 * and what was opened must be that same file (a link swapped in meanwhile is refused too).
 */
static int open_entry(int dir, const char *name, int flags) {
    struct stat entry, opened;
    if (fstatat(dir, name, &entry, AT_SYMLINK_NOFOLLOW) < 0) return -1;
    if (S_ISLNK(entry.st_mode)) return errno = ELOOP, -1;
    int fd = openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    if (fstat(fd, &opened) < 0 || opened.st_dev != entry.st_dev || opened.st_ino != entry.st_ino) {
        close(fd);
        return errno = ELOOP, -1;
    }
    return fd;
}

/* Opens path (relative, '/'-separated) under the working directory without following any link. */
static int open_inside(const char *path) {
    char copy[4096];
    if (strlen(path) >= sizeof copy) return errno = ENAMETOOLONG, -1;
    strcpy(copy, path);
    int dir = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return -1;
    char *part = copy, *slash;
    while ((slash = strchr(part, '/')) != NULL) {
        *slash = 0;
        int next = open_entry(dir, part, O_RDONLY | O_DIRECTORY);
        close(dir);
        if (next < 0) return -1;
        dir = next;
        part = slash + 1;
    }
    int fd = open_entry(dir, part, O_RDONLY | O_NONBLOCK);
    close(dir);
    return fd;
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int collect(int argc, char **argv) {
    if (argc < 4) {
        dprintf(2, "usage: sandboxd-agent collect MAX_FILES MAX_BYTES PATTERN...\n");
        return 2;
    }
    long max_files = strtol(argv[2], NULL, 10), max_bytes = strtol(argv[3], NULL, 10);
    if (max_files <= 0 || max_bytes <= 0) return 2;
    glob_t found = {0};
    for (int i = 4; i < argc; i++) {
        int flags = GLOB_NOSORT | (i > 4 ? GLOB_APPEND : 0);
        int done = glob(argv[i], flags, NULL, &found);
        if (done != 0 && done != GLOB_NOMATCH) {
            dprintf(2, "sandboxd-agent: glob %s failed\n", argv[i]);
            return 1;
        }
    }
    /* Each file once, in name order, however many patterns matched it. */
    qsort(found.gl_pathv, found.gl_pathc, sizeof *found.gl_pathv, compare_names);
    char *buffer = malloc((size_t)max_bytes + 1);
    if (!buffer) die("malloc");
    long returned = 0;
    for (size_t i = 0; i < found.gl_pathc; i++) {
        const char *name = found.gl_pathv[i];
        if (i > 0 && strcmp(name, found.gl_pathv[i - 1]) == 0) continue;
        struct stat info;
        int fd = open_inside(name);
        if (fd < 0) {
            if (errno != ELOOP && errno != ENOTDIR) skip_file(name, strerror(errno));
            else skip_file(name, "not a regular file");
            continue;
        }
        if (fstat(fd, &info) < 0 || !S_ISREG(info.st_mode)) {
            close(fd);
            if (!S_ISDIR(info.st_mode)) skip_file(name, "not a regular file");
            continue;
        }
        if (returned >= max_files) {
            close(fd);
            skip_file(name, "more files matched than a result returns");
            continue;
        }
        if (info.st_size > max_bytes) {
            close(fd);
            skip_file(name, "larger than an output file may be");
            continue;
        }
        size_t size = 0;
        ssize_t n;
        while (size <= (size_t)max_bytes && (n = read(fd, buffer + size, (size_t)max_bytes + 1 - size)) > 0)
            size += (size_t)n;
        close(fd);
        if (size > (size_t)max_bytes) {
            skip_file(name, "larger than an output file may be");
            continue;
        }
        send_record('F', name, buffer, (uint32_t)size);
        returned++;
    }
    free(buffer);
    globfree(&found);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "collect") == 0) return collect(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    if (pipe2(sigchld_pipe, O_CLOEXEC | O_NONBLOCK)) die("pipe");
    struct sigaction action = {.sa_handler = on_sigchld, .sa_flags = SA_RESTART | SA_NOCLDSTOP};
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGCHLD, &action, NULL)) die("sigaction");
    send_frame('r', PROTOCOL, sizeof PROTOCOL - 1);
    for (;;) {
        char *payload;
        uint32_t size;
        char type = read_frame(&payload, &size);
        if (type == 'x') {
            struct command command;
            if (parse_command(payload, size, &command) < 0) {
                errno = EPROTO;
                die("malformed command");
            }
            run(&command);
            free(command.argv);
        } else if (type == 'q') {
            exit(0);
        } else if (type != 'c' && type != 'i') {
            errno = EPROTO;
            die("unexpected frame");
        }
        free(payload);
    }
}
