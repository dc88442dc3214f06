/* bsnap.c: the operator's tool for a running busesnap (snapshots, clones,
 * rollback, delete, rename, default, access, info, check, diff, gc).
 *
 * bsnap never opens the image: it speaks the control protocol of
 * doc/control.md over the server's Unix socket (one request per run, a
 * hello first) and formats the answer.  Exit codes: 0 ok, 1 refused or
 * failed (one line on stderr), 2 usage.  The --json forms print the
 * protocol's objects unchanged, so they are as stable as the protocol.
 * The default socket path is common_default_control_path()'s, as the
 * server's.  It talks only to a server of its own user or root: before
 * sending anything it checks the socket file's owner and type and the
 * listening process's SO_PEERCRED uid; and it waits at most --timeout
 * seconds for any line (the server sends keepalive lines during long
 * operations), so a stopped or fake server cannot hang it.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/common.h"
#define BSNAP_PROTOCOL_VERSION 1
#define BSNAP_NAME_MAX 64

static const char *control_path;
static const char *cmd_name = NULL;
#define BSNAP_TIMEOUT 5 /* seconds, for a line from the server */
static int timeout_secs = BSNAP_TIMEOUT;

static void usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
static void usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "bsnap: %s%s", cmd_name ? cmd_name : "",
            cmd_name ? ": " : "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see bsnap %s%s--help)\n", cmd_name ? cmd_name : "",
            cmd_name ? " " : "");
    exit(2);
}

static void die(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    fputs("bsnap: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* A name or a UUID: 1-64 bytes of [A-Za-z0-9._:+@-], not starting '-'
 * ('@' only in the names of ephemeral clones, SNAP@ephemeral:ID). */
static void check_name(const char *what, const char *s)
{
    size_t n = strlen(s);
    int ok = n >= 1 && n <= BSNAP_NAME_MAX && s[0] != '-';
    for (size_t i = 0; ok && i < n; i++)
        ok = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
             (s[i] >= '0' && s[i] <= '9') || strchr("._:+@-", s[i]);
    if (!ok)
        usage_error("invalid %s \"%s\": 1 to %d characters of A-Z a-z 0-9 "
                    ". _ : + -, not starting with -",
                    what, s, BSNAP_NAME_MAX);
}

/* A name for a new volume or snapshot: '@' is the server's. */
static void check_new_name(const char *what, const char *s)
{
    check_name(what, s);
    if (strchr(s, '@'))
        usage_error("invalid %s \"%s\": '@' is reserved for ephemeral "
                    "clones (export SNAP@ephemeral)",
                    what, s);
}

/* ---- the connection ---- */

static FILE *conn;
static int conn_fd = -1;

/* Read one response line; NULL at EOF.  The caller owns the result. */
static json_t *read_line(void)
{
    char *line = NULL;
    size_t cap = 0;
    errno = 0;
    ssize_t n = getline(&line, &cap, conn);
    if (n <= 0) {
        free(line);
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            die("%s: no answer from the server in %d s (a stopped or hung "
                "server? --timeout SECS waits longer)",
                control_path, timeout_secs);
        return NULL;
    }
    json_error_t err;
    json_t *j = json_loadb(line, (size_t)n, 0, &err);
    if (!j || !json_is_object(j))
        die("%s: malformed answer from the server: %s", control_path,
            j ? "not an object" : err.text);
    free(line);
    return j;
}

static void send_req(json_t *req)
{
    char *s = json_dumps(req, JSON_COMPACT);
    if (!s)
        die("out of memory");
    size_t len = strlen(s);
    if (send(conn_fd, s, len, MSG_NOSIGNAL) != (ssize_t)len ||
        send(conn_fd, "\n", 1, MSG_NOSIGNAL) != 1)
        die("%s: cannot send the request: %s", control_path,
            errno == EAGAIN ? "the server does not read (timed out)"
                            : strerror(errno));
    free(s);
    json_decref(req);
}

static const char *jstr(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static long long jint(json_t *o, const char *key)
{
    return (long long)json_integer_value(json_object_get(o, key));
}

/* Exit 1 with the server's message if res is an error. */
static void check_ok(json_t *res)
{
    if (!json_is_true(json_object_get(res, "ok"))) {
        const char *m = jstr(res, "message");
        die("%s", *m ? m : jstr(res, "error"));
    }
}

static const char *user_of(uid_t uid)
{
    static char buf[64];
    struct passwd *pw = getpwuid(uid);
    if (pw)
        snprintf(buf, sizeof buf, "%s (uid %u)", pw->pw_name, (unsigned)uid);
    else
        snprintf(buf, sizeof buf, "uid %u", (unsigned)uid);
    return buf;
}

/* Trust only a server of our own user or root: anyone may create a socket
 * where we look (in a shared directory, or if a path was mistyped), and
 * answer with invented volumes or swallow our commands. */
static void check_socket_file(void)
{
    struct stat st;
    uid_t me = geteuid();
    if (lstat(control_path, &st) < 0)
        return; /* connect() says what is wrong */
    if (!S_ISSOCK(st.st_mode))
        die("%s is not a socket (it is owned by %s): refusing to use it",
            control_path, user_of(st.st_uid));
    if (st.st_uid != me && st.st_uid != 0)
        die("%s belongs to %s, not to you or root: refusing to talk to the "
            "server there",
            control_path, user_of(st.st_uid));
}

static void check_peer(void)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(conn_fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        die("%s: cannot tell who runs the server: %s", control_path,
            strerror(errno));
    if (cred.uid != geteuid() && cred.uid != 0)
        die("%s: the server there runs as %s (pid %d), not as you or root: "
            "refusing to talk to it",
            control_path, user_of(cred.uid), (int)cred.pid);
}

static void connect_server(void)
{
    static char path[256];
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (!control_path) { /* not given, before or after the command */
        if (common_default_control_path("bsnap", path, sizeof path, 0) < 0)
            exit(1);
        control_path = path;
    }
    if (strlen(control_path) >= sizeof sa.sun_path)
        usage_error("control socket path too long: %s", control_path);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", control_path);
    check_socket_file();
    conn_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (conn_fd < 0)
        die("socket: %s", strerror(errno));
    /* Bounds connect() too (a server whose backlog is full), then every
     * read and write. */
    struct timeval tv = {.tv_sec = timeout_secs};
    setsockopt(conn_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(conn_fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(conn_fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        die("cannot reach busesnap at %s: %s (is the server running? "
            "--control PATH or $BSNAP_CONTROL choose the socket)",
            control_path,
            errno == EAGAIN ? "no room in its queue (timed out)"
                            : strerror(errno));
    check_peer();
    conn = fdopen(conn_fd, "r");
    if (!conn)
        die("fdopen: %s", strerror(errno));
    json_t *g = read_line();
    if (!g)
        die("%s: the server closed the connection", control_path);
    if (json_object_get(g, "ok"))
        check_ok(g); /* a refusal (e.g. another user) */
    if (strcmp(jstr(g, "busesnap"), "control") != 0)
        die("%s: not a busesnap control socket", control_path);
    json_decref(g);
    send_req(json_pack("{s:s, s:i}", "op", "hello", "version",
                       BSNAP_PROTOCOL_VERSION));
    json_t *h = read_line();
    if (!h)
        die("%s: the server closed the connection", control_path);
    check_ok(h);
    json_decref(h);
}

static int show_progress;

static void set_timeout(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || end == s || v < 1 || v > 86400)
        usage_error("--timeout wants 1 to 86400 seconds, not \"%s\"", s);
    timeout_secs = (int)v;
}

/* Send req (owned) and return the final response (progress lines are
 * printed to stderr when show_progress).  Exits on error responses. */
static json_t *request(json_t *req)
{
    send_req(req);
    for (;;) {
        json_t *res = read_line();
        if (!res)
            die("%s: the server closed the connection", control_path);
        json_t *p = json_object_get(res, "progress");
        if (p) { /* check's progress, or a keepalive (elapsed_ms only) */
            if (show_progress && json_object_get(p, "total")) {
                long long done = jint(p, "done"), total = jint(p, "total");
                fprintf(stderr, "\rchecking: %lld / %lld (%.0f%%)  ", done,
                        total, total ? 100.0 * done / total : 100.0);
                if (done == total)
                    fputc('\n', stderr);
            }
            json_decref(res);
            continue;
        }
        check_ok(res);
        return res;
    }
}

static void print_json(json_t *j)
{
    json_dumpf(j, stdout, JSON_INDENT(2));
    putchar('\n');
}

/* ---- commands ---- */

struct cmd {
    const char *name;
    const char *usage; /* after "bsnap [--control PATH] NAME " */
    const char *help;
    int (*run)(int argc, char **argv);
};

static int json_out, force, none, allow_any, set_ro = -1;
static int exact_bytes; /* --bytes: exact byte counts, not 8.0G */
static const char *volume, *new_default;
static const char *allow[256];
static size_t nallow;

/* getopt over the command's options: --json, --force, --volume,
 * --progress, --control, --help.  Returns the index of the first
 * positional argument. */
static const struct cmd *current;
static void print_cmd_help(const struct cmd *c);

static int parse_opts(int argc, char **argv, const char *allowed)
{
    static const struct option opts[] = {{"json", no_argument, 0, 'j'},
                                         {"force", no_argument, 0, 'f'},
                                         {"volume", required_argument, 0, 'V'},
                                         {"progress", no_argument, 0, 'p'},
                                         {"default", required_argument, 0, 'D'},
                                         {"none", no_argument, 0, 'n'},
                                         {"read-only", no_argument, 0, 'r'},
                                         {"read-write", no_argument, 0, 'w'},
                                         {"allow", required_argument, 0, 'a'},
                                         {"allow-any", no_argument, 0, 'A'},
                                         {"control", required_argument, 0, 'c'},
                                         {"timeout", required_argument, 0, 't'},
                                         {"help", no_argument, 0, 'h'},
                                         {"bytes", no_argument, 0, 'b'},
                                         {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'h') {
            print_cmd_help(current);
            exit(0);
        }
        if (c == 'c') {
            control_path = optarg;
            continue;
        }
        if (c == 't') {
            set_timeout(optarg);
            continue;
        }
        if (c == '?' || !strchr(allowed, c))
            usage_error("bad option \"%s\"", argv[optind - 1]);
        if (c == 'j')
            json_out = 1;
        else if (c == 'b')
            exact_bytes = 1;
        else if (c == 'f')
            force = 1;
        else if (c == 'V')
            volume = optarg;
        else if (c == 'p')
            show_progress = 1;
        else if (c == 'D')
            new_default = optarg;
        else if (c == 'n')
            none = 1;
        else if (c == 'r' || c == 'w') {
            if (set_ro != -1 && set_ro != (c == 'r'))
                usage_error("--read-only and --read-write together");
            set_ro = c == 'r';
        } else if (c == 'a') {
            if (nallow == sizeof allow / sizeof allow[0])
                usage_error("at most %zu --allow", nallow);
            if (!*optarg)
                usage_error("--allow wants a TLS identity");
            allow[nallow++] = optarg;
        } else if (c == 'A')
            allow_any = 1;
    }
    return optind;
}

static void nargs(int argc, char **argv, int first, int n)
{
    if (argc - first < n)
        usage_error("missing argument%s", n - (argc - first) > 1 ? "s" : "");
    if (argc - first > n)
        usage_error("unexpected argument \"%s\"", argv[first + n]);
}

/* A byte count as people read it ("8.0G"), or exactly with --bytes. */
static const char *bytes_str(long long v, char *buf, size_t len)
{
    if (exact_bytes) {
        snprintf(buf, len, "%lld", v);
        return buf;
    }
    return common_human_size((unsigned long long)v, buf, len);
}

static void print_created(json_t *res)
{
    json_t *o = json_object_get(res, "object");
    if (json_out)
        print_json(o);
    else
        printf("%s %s\n", jstr(o, "name"), jstr(o, "uuid"));
}

static int cmd_snapshot(int argc, char **argv)
{
    int i = parse_opts(argc, argv, "jV");
    nargs(argc, argv, i, 1);
    check_new_name("snapshot name", argv[i]);
    if (volume)
        check_name("volume", volume);
    connect_server();
    json_t *req = json_pack("{s:s, s:s}", "op", "create", "name", argv[i]);
    if (volume)
        json_object_set_new(req, "volume", json_string(volume));
    json_t *res = request(req);
    print_created(res);
    json_decref(res);
    return 0;
}

static int cmd_clone(int argc, char **argv)
{
    int i = parse_opts(argc, argv, "j");
    nargs(argc, argv, i, 2);
    check_name("snapshot", argv[i]);
    check_new_name("volume name", argv[i + 1]);
    connect_server();
    json_t *res = request(json_pack("{s:s, s:s, s:s}", "op", "clone",
                                    "snapshot", argv[i], "name", argv[i + 1]));
    print_created(res);
    json_decref(res);
    return 0;
}

/* End a rollback/delete line with the clients --force disconnected. */
static void print_disconnected(json_t *res)
{
    long long n = jint(res, "disconnected");
    if (n)
        printf(" (disconnected %lld client%s)", n, n == 1 ? "" : "s");
    putchar('\n');
}

static int cmd_rollback(int argc, char **argv)
{
    int i = parse_opts(argc, argv, "fVj");
    nargs(argc, argv, i, 1);
    check_name("snapshot", argv[i]);
    if (volume)
        check_name("volume", volume);
    connect_server();
    json_t *req = json_pack("{s:s, s:s, s:b}", "op", "rollback", "snapshot",
                            argv[i], "force", force);
    if (volume)
        json_object_set_new(req, "volume", json_string(volume));
    json_t *res = request(req);
    if (json_out) {
        json_object_del(res, "ok");
        print_json(res);
    } else {
        printf("rolled back %s to %s", jstr(res, "volume"),
               jstr(res, "snapshot"));
        print_disconnected(res);
    }
    json_decref(res);
    return 0;
}

static int cmd_delete(int argc, char **argv)
{
    int i = parse_opts(argc, argv, "fjD");
    nargs(argc, argv, i, 1);
    check_name("name", argv[i]);
    if (new_default)
        check_name("volume", new_default);
    connect_server();
    json_t *req = json_pack("{s:s, s:s, s:b}", "op", "delete", "name", argv[i],
                            "force", force);
    if (new_default)
        json_object_set_new(req, "default", json_string(new_default));
    json_t *res = request(req);
    json_t *o = json_object_get(res, "object");
    if (json_out) {
        json_object_del(res, "ok");
        print_json(res);
    } else {
        printf("deleted %s %s", jstr(o, "kind"), jstr(o, "name"));
        print_disconnected(res);
        if (json_is_true(json_object_get(o, "default"))) {
            json_t *d = json_object_get(res, "default");
            if (json_is_string(d))
                printf("the default volume (export \"\") is now %s\n",
                       json_string_value(d));
            else
                printf("there is no default volume now: export \"\" does "
                       "not exist\n");
        }
    }
    json_decref(res);
    return 0;
}

static int cmd_default(int argc, char **argv)
{
    int i = parse_opts(argc, argv, "fjn");
    nargs(argc, argv, i, none ? 0 : argc - i > 0 ? 1 : 0);
    if (argc - i == 1)
        check_name("volume", argv[i]);
    if (force && !none && argc - i == 0)
        usage_error("--force goes with a NAME or --none");
    connect_server();
    json_t *req = json_pack("{s:s}", "op", "default");
    if (argc - i == 1)
        json_object_set_new(req, "name", json_string(argv[i]));
    if (none)
        json_object_set_new(req, "none", json_true());
    if (force)
        json_object_set_new(req, "force", json_true());
    json_t *res = request(req);
    json_t *o = json_object_get(res, "object");
    if (json_out) {
        json_object_del(res, "ok");
        print_json(res);
    } else if (json_is_object(o)) {
        printf("%s %s", jstr(o, "name"), jstr(o, "uuid"));
        print_disconnected(res);
    } else {
        printf("none: export \"\" does not exist");
        print_disconnected(res);
    }
    json_decref(res);
    return 0;
}

/* "ro", "2 ids", "ro, 1 id" or "-": the access column of list. */
static const char *access_of(json_t *o, char *buf, size_t len)
{
    size_t n = json_array_size(json_object_get(o, "allow"));
    int ro = json_is_true(json_object_get(o, "read_only"));
    if (!ro && !n)
        return "-";
    snprintf(buf, len, "%s%s%.0zu%s", ro ? "ro" : "", ro && n ? ", " : "", n,
             n == 0   ? ""
             : n == 1 ? " id"
                      : " ids");
    return buf;
}

static void print_access(json_t *o)
{
    json_t *ids = json_object_get(o, "allow");
    size_t k;
    json_t *id;
    printf("%s %s: %s\n", jstr(o, "kind"), jstr(o, "name"),
           json_is_true(json_object_get(o, "read_only")) ||
                   !strcmp(jstr(o, "kind"), "snapshot")
               ? "read-only"
               : "read-write");
    if (!json_array_size(ids))
        printf("  any client may open it\n");
    else
        json_array_foreach(ids, k, id)
            printf("  allowed: %s\n", json_string_value(id));
}

static int cmd_access(int argc, char **argv)
{
    int i = parse_opts(argc, argv, "fjrwaA");
    nargs(argc, argv, i, 1);
    check_name("name", argv[i]);
    if (allow_any && nallow)
        usage_error("--allow and --allow-any together");
    int change = set_ro != -1 || nallow || allow_any;
    if (force && !change)
        usage_error("--force goes with a change");
    connect_server();
    json_t *req = json_pack("{s:s, s:s}", "op", "access", "name", argv[i]);
    if (set_ro != -1)
        json_object_set_new(req, "read_only", json_boolean(set_ro));
    if (allow_any)
        json_object_set_new(req, "allow", json_null());
    if (nallow) {
        json_t *a = json_array();
        for (size_t k = 0; k < nallow; k++)
            json_array_append_new(a, json_string(allow[k]));
        json_object_set_new(req, "allow", a);
    }
    if (force)
        json_object_set_new(req, "force", json_true());
    json_t *res = request(req);
    if (json_out) {
        json_object_del(res, "ok");
        print_json(res);
    } else {
        print_access(json_object_get(res, "object"));
        long long n = jint(res, "disconnected");
        if (n)
            printf("(disconnected %lld client%s)\n", n, n == 1 ? "" : "s");
    }
    json_decref(res);
    return 0;
}

/* rename and keep: NAME NEWNAME to op, the object it returns printed as
 * "DONE NAME JOIN NEWNAME". */
static int rename_like(int argc, char **argv, const char *op, const char *what,
                       const char *done, const char *join)
{
    int i = parse_opts(argc, argv, "j");
    nargs(argc, argv, i, 2);
    check_name(what, argv[i]);
    check_new_name("new name", argv[i + 1]);
    connect_server();
    json_t *res = request(json_pack("{s:s, s:s, s:s}", "op", op, "name",
                                    argv[i], "new_name", argv[i + 1]));
    if (json_out)
        print_json(json_object_get(res, "object"));
    else
        printf("%s %s %s %s\n", done, argv[i], join,
               jstr(json_object_get(res, "object"), "name"));
    json_decref(res);
    return 0;
}

static int cmd_rename(int argc, char **argv)
{
    return rename_like(argc, argv, "rename", "name", "renamed", "to");
}

static int cmd_resize(int argc, char **argv)
{
    int i = parse_opts(argc, argv, "fjb");
    nargs(argc, argv, i, 2);
    check_name("volume", argv[i]);
    uint64_t size;
    int r = common_parse_size(argv[i + 1], &size);
    if (r < 0)
        usage_error("%s", common_size_error(argv[i + 1], r));
    if (size == 0 || size % 4096 || size > INT64_MAX)
        usage_error("size %s is not a positive multiple of 4096 bytes",
                    argv[i + 1]);
    connect_server();
    json_t *req = json_pack("{s:s, s:s, s:I}", "op", "resize", "name", argv[i],
                            "size", (json_int_t)size);
    if (force)
        json_object_set_new(req, "force", json_true());
    json_t *res = request(req);
    json_t *o = json_object_get(res, "object");
    if (json_out)
        print_json(o);
    else {
        char a[32], b[32];
        printf("resized %s from %s to %s\n", jstr(o, "name"),
               bytes_str(jint(res, "old_size"), a, sizeof a),
               bytes_str(jint(o, "size"), b, sizeof b));
    }
    json_decref(res);
    return 0;
}

static int cmd_keep(int argc, char **argv)
{
    return rename_like(argc, argv, "keep", "ephemeral clone", "kept",
                       "as volume");
}

/* list: a tree.  Roots are original volumes; a snapshot sits below the
 * volume it was taken of, a clone below its origin snapshot.  A volume
 * rolled back to its own snapshot would make a cycle: volumes on a cycle
 * are roots. */
struct node {
    json_t *o;
    const char *uuid, *parent;
    int volume, root, shown;
};

static int find(struct node *v, size_t n, const char *uuid)
{
    for (size_t i = 0; uuid[0] && i < n; i++)
        if (strcmp(v[i].uuid, uuid) == 0)
            return (int)i;
    return -1;
}

static int name_width;

static void print_node(struct node *v, size_t n, size_t i, int depth)
{
    char size[24], written[24], label[256];
    json_t *o = v[i].o;
    v[i].shown = 1;
    snprintf(label, sizeof label, "%*s%s%s", depth * 2, "", jstr(o, "name"),
             json_is_true(json_object_get(o, "default")) ? "*" : "");
    char acc[32];
    /* An ephemeral clone is a volume that goes with its clients. */
    const char *kind = json_is_true(json_object_get(o, "ephemeral"))
                           ? "ephemeral"
                           : jstr(o, "kind");
    printf("%-*s  %-9s  %-36s  %-12s  %-20s  %*s  %*s  %7lld  %s\n", name_width,
           label, kind, jstr(o, "uuid"),
           *jstr(o, "parent") ? jstr(o, "parent") : "-", jstr(o, "created_iso"),
           exact_bytes ? 16 : 6, bytes_str(jint(o, "size"), size, sizeof size),
           exact_bytes ? 16 : 7,
           bytes_str(jint(o, "written"), written, sizeof written),
           jint(o, "clients"), access_of(o, acc, sizeof acc));
    for (size_t k = 0; k < n; k++)
        if (!v[k].shown && !v[k].root && strcmp(v[k].parent, v[i].uuid) == 0)
            print_node(v, n, k, depth + 1);
}

static int depth_of(struct node *v, size_t n, size_t i)
{
    int d = 0;
    for (int k = (int)i; k >= 0 && !v[k].root && d <= (int)n;
         k = find(v, n, v[k].parent))
        d++;
    return d;
}

static int cmd_list(int argc, char **argv)
{
    int i = parse_opts(argc, argv, "jb");
    nargs(argc, argv, i, 0);
    connect_server();
    json_t *res = request(json_pack("{s:s}", "op", "list"));
    json_t *objs = json_object_get(res, "objects");
    if (json_out) {
        print_json(objs);
        json_decref(res);
        return 0;
    }
    size_t n = json_array_size(objs);
    struct node *v = calloc(n ? n : 1, sizeof *v);
    if (!v)
        die("out of memory");
    for (size_t k = 0; k < n; k++) {
        json_t *o = json_array_get(objs, k);
        v[k].o = o;
        v[k].uuid = jstr(o, "uuid");
        v[k].parent = jstr(o, "parent_uuid");
        v[k].volume = strcmp(jstr(o, "kind"), "volume") == 0;
    }
    for (size_t k = 0; k < n; k++) {
        int p = find(v, n, v[k].parent);
        if (p < 0) {
            v[k].root = 1;
            continue;
        }
        /* Walk up: back to k means a cycle; volumes on it are roots. */
        size_t steps = 0;
        for (; p >= 0 && (size_t)p != k && steps <= n; steps++)
            p = find(v, n, v[p].parent);
        if (p >= 0 && (size_t)p == k && v[k].volume)
            v[k].root = 1;
    }
    name_width = 4;
    for (size_t k = 0; k < n; k++) {
        int w = depth_of(v, n, k) * 2 + (int)strlen(jstr(v[k].o, "name")) + 1;
        if (w > name_width)
            name_width = w;
    }
    printf("%-*s  %-9s  %-36s  %-12s  %-20s  %*s  %*s  %7s  %s\n", name_width,
           "NAME", "KIND", "UUID", "PARENT", "CREATED", exact_bytes ? 16 : 6,
           "SIZE", exact_bytes ? 16 : 7, "WRITTEN", "CLIENTS", "ACCESS");
    int have_default = 0;
    for (size_t k = 0; k < n; k++) {
        have_default |= json_is_true(json_object_get(v[k].o, "default"));
        if (v[k].root && !v[k].shown)
            print_node(v, n, k, 0);
    }
    for (size_t k = 0; k < n; k++) /* anything left: a cycle of snapshots */
        if (!v[k].shown)
            print_node(v, n, k, 0);
    if (!have_default)
        printf("(no default volume: export \"\" does not exist; bsnap "
               "default NAME)\n");
    free(v);
    json_decref(res);
    return 0;
}

static void print_info(json_t *in)
{
    char b[16];
#define BYTES(label, key)                                                      \
    do {                                                                       \
        if (exact_bytes)                                                       \
            printf("%-18s %lld\n", label, jint(in, key));                      \
        else                                                                   \
            printf("%-18s %s (%lld bytes)\n", label,                           \
                   common_human_size((unsigned long long)jint(in, key), b,     \
                                     sizeof b),                                \
                   jint(in, key));                                             \
    } while (0)
    printf("%-18s %s\n", "image:", jstr(in, "image"));
    printf("%-18s %s\n", "uuid:", jstr(in, "uuid"));
    printf("%-18s %lld\n", "format version:", jint(in, "format_version"));
    BYTES("logical size:", "size");
    BYTES("physical bytes:", "physical_bytes");
    printf("%-18s %lld\n", "chunks:", jint(in, "chunks"));
    BYTES("referenced:", "referenced_bytes");
    printf("%-18s %.2f\n", "dedup ratio:",
           json_number_value(json_object_get(in, "dedup_ratio")));
    BYTES("free:", "free_bytes");
    BYTES("reclaimable:", "reclaimable_bytes");
    BYTES("reserved:", "reserved_bytes");
    BYTES("given back:", "punched_bytes");
    BYTES("index:", "index_bytes");
    BYTES("index limit:", "index_limit");
    BYTES("journal:", "journal_bytes");
    BYTES("hash filter:", "filter_bytes");
    printf("%-18s %lld\n", "filter layers:", jint(in, "filter_layers"));
    printf("%-18s %lld\n", "hashes staged:", jint(in, "hashes_staged"));
    printf("%-18s %lld\n", "volumes:", jint(in, "volumes"));
    printf("%-18s %lld\n", "snapshots:", jint(in, "snapshots"));
#undef BYTES
}

static int cmd_info(int argc, char **argv)
{
    int i = parse_opts(argc, argv, "jb");
    nargs(argc, argv, i, 0);
    connect_server();
    json_t *res = request(json_pack("{s:s}", "op", "info"));
    if (json_out)
        print_json(json_object_get(res, "info"));
    else
        print_info(json_object_get(res, "info"));
    json_decref(res);
    return 0;
}

static int cmd_gc(int argc, char **argv)
{
    int i = parse_opts(argc, argv, "jb");
    nargs(argc, argv, i, 0);
    connect_server();
    json_t *res = request(json_pack("{s:s}", "op", "gc"));
    if (json_out) {
        print_json(json_object_get(res, "info"));
    } else {
        char b[24], p[24];
        json_t *in = json_object_get(res, "info");
        printf("collected in %.1f ms; free %s, physical %s\n",
               (double)jint(res, "elapsed_us") / 1000.0,
               bytes_str(jint(in, "free_bytes"), b, sizeof b),
               bytes_str(jint(in, "physical_bytes"), p, sizeof p));
    }
    json_decref(res);
    return 0;
}

static int cmd_check(int argc, char **argv)
{
    show_progress = isatty(2);
    int i = parse_opts(argc, argv, "pj");
    nargs(argc, argv, i, 0);
    connect_server();
    json_t *res = request(json_pack("{s:s}", "op", "check"));
    long long problems = jint(res, "problems");
    if (json_out) {
        json_object_del(res, "ok");
        print_json(res);
    } else {
        size_t k;
        json_t *m;
        json_array_foreach(json_object_get(res, "messages"), k, m)
            fprintf(stderr, "bsnap: problem: %s\n", json_string_value(m));
        if (problems)
            fprintf(stderr, "bsnap: %lld problem%s found\n", problems,
                    problems == 1 ? "" : "s");
        else
            printf("no problems found\n");
    }
    json_decref(res);
    return problems ? 1 : 0;
}

static int cmd_diff(int argc, char **argv)
{
    int i = parse_opts(argc, argv, "jb");
    nargs(argc, argv, i, 2);
    check_name("FROM", argv[i]);
    check_name("TO", argv[i + 1]);
    connect_server();
    json_t *res = request(json_pack("{s:s, s:s, s:s}", "op", "diff", "from",
                                    argv[i], "to", argv[i + 1]));
    if (json_out) {
        json_object_del(res, "ok");
        print_json(res);
    } else {
        size_t k;
        json_t *e;
        char b[24];
        json_array_foreach(json_object_get(res, "extents"), k, e)
            printf("%lld %lld\n", jint(e, "offset"), jint(e, "length"));
        fprintf(stderr, "%s changed in %zu extent%s%s\n",
                bytes_str(jint(res, "changed_bytes"), b, sizeof b),
                json_array_size(json_object_get(res, "extents")),
                json_array_size(json_object_get(res, "extents")) == 1 ? ""
                                                                      : "s",
                json_is_true(json_object_get(res, "truncated"))
                    ? " (list truncated)"
                    : "");
    }
    json_decref(res);
    return 0;
}

static const struct cmd cmds[] = {
    {"snapshot", "SNAP [--volume VOL] [--json]",
     "Snapshot VOL (default: the default volume) as SNAP; prints its name\n"
     "and UUID.  O(1), atomic: it holds every write acknowledged before.\n"
     "`bsnap create` is the same command (its older name); it makes a\n"
     "snapshot, unlike `busesnap create`, which makes a new image.\n",
     cmd_snapshot},
    {"list", "[--bytes] [--json]",
     "Every volume and snapshot as a tree (snapshots below their volume,\n"
     "clones below their origin snapshot) with UUID, parent, creation time,\n"
     "size, bytes written in it, NBD clients and access (ro: read-only;\n"
     "N ids: restricted to N TLS identities; see access).  * marks the\n"
     "default volume (export \"\"); a last line says when there is none.\n"
     "Sizes read 8.0G and 512M; --bytes prints exact byte counts.\n"
     "KIND ephemeral: a clone made by opening export SNAP@ephemeral[:ID],\n"
     "deleted when its last client disconnects (see keep).\n",
     cmd_list},
    {"rollback", "SNAP [--volume VOL] [--force] [--json]",
     "Make VOL (default: the volume SNAP was taken of) read as SNAP.\n"
     "Refused while VOL has NBD clients (their caches would be stale)\n"
     "unless --force, which disconnects them first.\n",
     cmd_rollback},
    {"clone", "SNAP NEWVOL [--json]",
     "Create the writable volume NEWVOL starting from SNAP; it is served as\n"
     "NBD export NEWVOL at once.  O(1).\n",
     cmd_clone},
    {"delete", "NAME [--default VOL] [--force] [--json]",
     "Delete a snapshot or volume.  A served one is refused unless --force\n"
     "(disconnects its clients).  The default volume (export \"\") is\n"
     "refused unless --default VOL names the next default, or --force,\n"
     "after which export \"\" does not exist (until bsnap default).  The\n"
     "only volume is always refused.  A refused delete changes nothing and\n"
     "disconnects nobody.  A snapshot with clones may be deleted: the clones\n"
     "keep their content.  Space is reclaimed by the collector (see gc).\n",
     cmd_delete},
    {"default", "[VOL | --none] [--force] [--json]",
     "Show the default volume (export \"\"), or make VOL the default, or\n"
     "with --none leave export \"\" without a volume.  Refused while export\n"
     "\"\" has clients (they would get another disk on reconnecting)\n"
     "unless --force, which disconnects them first.\n",
     cmd_default},
    {"access",
     "NAME [--read-only | --read-write] [--allow ID]... "
     "[--allow-any] [--force] [--json]",
     "Show or change who may open NAME over NBD: --read-only makes its\n"
     "export read-only; --allow ID (repeatable) restricts it to clients\n"
     "with those TLS identities (a PSK username, or a certificate's subject\n"
     "DN as busesnap logs it), and --allow-any lifts that.  Snapshots and\n"
     "clones made later inherit the allowed identities.  A change that\n"
     "would refuse a connected client or take its writes away is refused\n"
     "unless --force, which disconnects the object's clients.\n",
     cmd_access},
    {"rename", "NAME NEWNAME [--json]",
     "Rename a volume or snapshot (its UUID stays).\n", cmd_rename},
    {"resize", "VOL SIZE [--force] [--bytes] [--json]",
     "Give volume VOL the size SIZE (suffixes K, M, G, T, P; KiB too).\n"
     "Growing is online: clients that connect afterwards see the new size\n"
     "and zeros past the old end.  Shrinking is refused unless --force, no\n"
     "client is connected to VOL and nothing is allocated past the new end\n"
     "(trim it first).  Snapshots keep their size.\n",
     cmd_resize},
    {"keep", "NAME NEWNAME [--json]",
     "Turn the live ephemeral clone NAME (export SNAP@ephemeral[:ID]) into\n"
     "the normal volume NEWNAME, which stays when its clients disconnect\n"
     "(to keep a failed job's disk for debugging).  Its clients stay\n"
     "connected.\n",
     cmd_keep},
    {"info", "[--bytes] [--json]",
     "Image UUID, format version, logical size, physical bytes, chunks,\n"
     "dedup ratio, free and reclaimable space: 8.0G (8589934592 bytes),\n"
     "or only the exact byte counts with --bytes.\n",
     cmd_info},
    {"check", "[--progress] [--json]",
     "Consistency check of the live image (progress on stderr when it is a\n"
     "terminal or with --progress).  Exit 1 if problems were found.\n",
     cmd_check},
    {"diff", "FROM TO [--bytes] [--json]",
     "Byte ranges that differ between two snapshots or volumes: one\n"
     "\"OFFSET LENGTH\" line each, a summary on stderr.\n",
     cmd_diff},
    {"gc", "[--bytes] [--json]",
     "Run the space collector to completion now (it also runs in the\n"
     "background).\n",
     cmd_gc},
};

static void print_cmd_help(const struct cmd *c)
{
    printf("Usage: bsnap [--control PATH] %s %s\n%s",
           cmd_name ? cmd_name : c->name, c->usage, c->help);
}

static void main_help(void)
{
    printf("Usage: bsnap [--control PATH] COMMAND [ARGS]\n"
           "Control a running busesnap server: snapshots, clones, rollback.\n"
           "\n");
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        printf("  %-9s %s\n", cmds[i].name, cmds[i].usage);
    printf("\n"
           "--control PATH: the server's control socket (default: "
           "$BSNAP_CONTROL,\n"
           "$XDG_RUNTIME_DIR/busesnap.ctl or /run/user/UID/busesnap.ctl, \n"
           "/run/busesnap.ctl for root, /tmp/busesnap-UID/busesnap.ctl\n"
           "otherwise).  Only a server of your own user or root is trusted.\n"
           "--timeout SECS: wait at most SECS for each answer (default %d,\n"
           "or $BSNAP_TIMEOUT).  Names and UUIDs are accepted wherever a\n"
           "name is.  `bsnap create` is snapshot's older name.\n"
           "`bsnap COMMAND --help` for details.\n"
           "Exit codes: 0 ok, 1 refused or failed, 2 usage.\n",
           BSNAP_TIMEOUT);
}

int main(int argc, char **argv)
{
    int i = 1;
    opterr = 0;
    const char *env = getenv("BSNAP_TIMEOUT");
    if (env && *env)
        set_timeout(env);
    while (i < argc && argv[i][0] == '-') {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            main_help();
            return 0;
        } else if (!strcmp(argv[i], "--version")) {
            printf("bsnap %s (control protocol %d)\n", BUSESNAP_VERSION,
                   BSNAP_PROTOCOL_VERSION);
            return 0;
        } else if (!strcmp(argv[i], "--control") && i + 1 < argc) {
            control_path = argv[i + 1];
            i += 2;
        } else if (!strncmp(argv[i], "--control=", 10)) {
            control_path = argv[i] + 10;
            i++;
        } else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
            set_timeout(argv[i + 1]);
            i += 2;
        } else if (!strncmp(argv[i], "--timeout=", 10)) {
            set_timeout(argv[i] + 10);
            i++;
        } else {
            usage_error("bad option \"%s\"", argv[i]);
        }
    }
    if (i >= argc)
        usage_error("missing COMMAND");
    if (!strcmp(argv[i], "help")) {
        main_help();
        return 0;
    }
    /* create: the older name of snapshot; messages use the name typed. */
    const char *want = strcmp(argv[i], "create") ? argv[i] : "snapshot";
    for (size_t k = 0; k < sizeof cmds / sizeof cmds[0]; k++) {
        if (strcmp(want, cmds[k].name) != 0)
            continue;
        current = &cmds[k];
        cmd_name = argv[i];
        return cmds[k].run(argc - i, argv + i);
    }
    usage_error("unknown command \"%s\"", argv[i]);
}
