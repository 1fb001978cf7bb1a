/*
 * NovaCron test guest: the initramfs /init (PID 1).
 *
 * Reads its workload from /proc/cmdline, fills a working set of pages whose
 * content is a deterministic function of (seed, page index, page version),
 * then dirties pages at a given rate and prints a self-verifying heartbeat on
 * the serial console once a second.  See guest/README.md.
 *
 * Build: gcc -static -O2 -Wall -Wextra -Werror -o init init.c
 *
 * Run as any process other than PID 1 (e.g. ./init nc_wss_mib=16 nc_rate_mib=4)
 * it skips the mounts and takes its nc_* words from argv: a host-side test.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE 4096u
#define STAMP_LEN 16u          /* bytes rewritten per dirtied page, sparse mode */
#define SAMPLE_RANDOM 256u     /* random pages verified per heartbeat */
#define SAMPLE_SWEEP 256u      /* consecutive pages verified per heartbeat */
#define RECENT_VERIFY_MAX 4096u /* recently dirtied pages verified per heartbeat */
#define TICK_NS 10000000ull    /* dirtying is paced in 10 ms slices */
#define MAX_BATCH 256u         /* pages dirtied before re-reading the clock */
#define NS_PER_S 1000000000ull

enum pattern { PATTERN_SPARSE, PATTERN_FULL };
enum fill { FILL_TEXT, FILL_RANDOM };

struct config {
    uint64_t wss_mib;
    uint64_t rate_mib;
    enum pattern pattern;
    enum fill fill;
    uint64_t seed;
    int selftest_corrupt;
};

/* All workload state lives in guest memory, so it survives a live migration. */
static struct config cfg = {64, 0, PATTERN_SPARSE, FILL_TEXT, 0, 0};
static uint8_t *mem;            /* working set, npages * PAGE_SIZE bytes */
static uint32_t *versions;      /* per-page version counter */
static uint64_t npages;
static uint64_t seq;
static uint64_t dirtied_pages;
static uint64_t dirty_rng;      /* chooses pages to dirty */
static uint64_t sample_rng;     /* chooses pages to verify */
static uint64_t sweep_cursor;   /* next page of the sequential sweep */
static uint32_t *recent;        /* pages dirtied since the last heartbeat (ring) */
static uint64_t recent_cap, recent_count;
static int failed;              /* sticky: a mismatch was seen at some point */
static uint64_t first_bad_page;
static uint8_t scratch[PAGE_SIZE + 16]; /* + slack for gen_text */

/* ---------------------------------------------------------------- output */

static void write_all(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDOUT_FILENO, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        buf += n;
        len -= (size_t)n;
    }
}

__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = (int)(sizeof line - 2);
    line[n++] = '\n';
    write_all(line, (size_t)n);
}

/* ------------------------------------------------------------ randomness */

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t splitmix(uint64_t *state)
{
    *state += 0x9e3779b97f4a7c15ull;
    return mix64(*state);
}

/* Uniform-enough index in [0, n). */
static inline uint64_t below(uint64_t r, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)r * n) >> 64);
}

static inline uint64_t page_key(uint64_t page, uint64_t version)
{
    return mix64(cfg.seed ^ mix64(page * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull) ^
                 mix64(version + 0xd6e8feb86659fd93ull));
}

/* ------------------------------------------------------------- text fill */

/* 256 words (at most 7 characters, plus a space or punctuation), picked one byte
 * of PRNG output at a time: English-like, compressible (~1.6 bits/char of
 * entropy; gzip and zstd -3 shrink it ~3x) and generated per page, so it does
 * not repeat the way a fixed text buffer would. */
static const char *const word_pool[256] = {
    "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for",
    "on", "are", "with", "as", "I", "his", "they", "be", "at", "one", "have", "this",
    "from", "or", "had", "by", "hot", "word", "but", "what", "some", "we", "can", "out",
    "other", "were", "all", "there", "when", "up", "use", "your", "how", "said", "an",
    "each", "she", "which", "do", "their", "time", "if", "will", "way", "about", "many",
    "then", "them", "write", "would", "like", "so", "these", "her", "long", "make", "thing",
    "see", "him", "two", "has", "look", "more", "day", "could", "go", "come", "did",
    "number", "sound", "no", "most", "people", "my", "over", "know", "water", "than",
    "call", "first", "who", "may", "down", "side", "been", "now", "find", "any", "new",
    "work", "part", "take", "get", "place", "made", "live", "where", "after", "back",
    "little", "only", "round", "man", "year", "came", "show", "every", "good", "me", "give",
    "our", "under", "name", "very", "through", "just", "form", "great", "think", "say",
    "help", "low", "line", "differ", "turn", "cause", "much", "mean", "before", "move",
    "right", "boy", "old", "too", "same", "tell", "does", "set", "three", "want", "air",
    "well", "also", "play", "small", "end", "put", "home", "read", "hand", "port", "large",
    "spell", "add", "even", "land", "here", "must", "big", "high", "such", "follow", "act",
    "why", "ask", "men", "change", "went", "light", "kind", "off", "need", "house",
    "picture", "try", "us", "again", "animal", "point", "mother", "world", "near", "build",
    "self", "earth", "father", "head", "stand", "own", "page", "should", "country", "found",
    "answer", "school", "grow", "study", "still", "learn", "plant", "cover", "food", "sun",
    "four", "between", "state", "keep", "eye", "never", "last", "let", "thought", "city",
    "tree", "cross", "farm", "hard", "start", "might", "story", "saw", "far", "sea", "draw",
    "left", "late", "run", "while", "press", "close", "night", "real", "life", "few",
    "north", "open", "seem", "next", "white", "begin", "got", "walk", "example",
};

/* Each slot: word + separator (at most 9 bytes, padded to 16), and its length. */
static uint8_t word_slot[256][16];
static uint8_t word_len[256];

static void init_word_slots(void)
{
    for (int i = 0; i < 256; i++) {
        size_t n = strlen(word_pool[i]);
        if (n > 7)
            n = 7;
        memcpy(word_slot[i], word_pool[i], n);
        /* Mostly spaces; some commas, full stops and line ends. */
        const char *sep = " ";
        if (i % 29 == 7)
            sep = ", ";
        else if (i % 37 == 11)
            sep = ". ";
        else if (i % 61 == 5)
            sep = ".\n";
        memcpy(word_slot[i] + n, sep, strlen(sep));
        word_len[i] = (uint8_t)(n + strlen(sep));
    }
}

/* Writes at least len bytes of text into dst (dst needs len + 16 bytes room). */
static void gen_text(uint8_t *dst, size_t len, uint64_t key)
{
    uint64_t state = key;
    size_t pos = 0;
    while (pos < len) {
        uint64_t r = splitmix(&state);
        for (int k = 0; k < 8 && pos < len; k++) {
            unsigned w = (unsigned)(r & 0xff);
            r >>= 8;
            memcpy(dst + pos, word_slot[w], 16);
            pos += word_len[w];
        }
    }
}

static void gen_random(uint8_t *dst, size_t len, uint64_t key)
{
    uint64_t state = key;
    for (size_t pos = 0; pos < len; pos += 8) {
        uint64_t r = splitmix(&state);
        memcpy(dst + pos, &r, 8);
    }
}

static void gen_bytes(uint8_t *dst, size_t len, uint64_t key)
{
    if (cfg.fill == FILL_TEXT)
        gen_text(dst, len, key);
    else
        gen_random(dst, len, key);
}

/* ------------------------------------------------------ page content model
 *
 * full:   content(p, v) = bytes(key(p, v))                      [4096 bytes]
 * sparse: content(p, v) = bytes(key(p, 0)), except for v > 0 the STAMP_LEN
 *         bytes at stamp_offset(p) are bytes(key(p, v)).
 */

static inline size_t stamp_offset(uint64_t page)
{
    uint64_t h = mix64(cfg.seed ^ (page * 0xc2b2ae3d27d4eb4full) ^ 0x165667b19e3779f9ull);
    return (size_t)below(h, PAGE_SIZE / STAMP_LEN) * STAMP_LEN;
}

/* Expected content of page at version v, into scratch. */
static void expected_page(uint64_t page, uint32_t v)
{
    if (cfg.pattern == PATTERN_FULL || v == 0) {
        gen_bytes(scratch, PAGE_SIZE, page_key(page, v));
        return;
    }
    gen_bytes(scratch, PAGE_SIZE, page_key(page, 0));
    uint8_t stamp[STAMP_LEN + 16];
    gen_bytes(stamp, STAMP_LEN, page_key(page, v));
    memcpy(scratch + stamp_offset(page), stamp, STAMP_LEN);
}

static void write_initial(uint64_t page)
{
    gen_bytes(scratch, PAGE_SIZE, page_key(page, 0));
    memcpy(mem + page * PAGE_SIZE, scratch, PAGE_SIZE);
    versions[page] = 0;
}

static void dirty_page(uint64_t page)
{
    uint32_t v = versions[page] + 1;
    if (v == 0) /* keep 0 meaning "initial fill" */
        v = 1;
    uint8_t *p = mem + page * PAGE_SIZE;
    if (cfg.pattern == PATTERN_FULL) {
        gen_bytes(scratch, PAGE_SIZE, page_key(page, v));
        memcpy(p, scratch, PAGE_SIZE);
    } else {
        uint8_t stamp[STAMP_LEN + 16];
        gen_bytes(stamp, STAMP_LEN, page_key(page, v));
        memcpy(p + stamp_offset(page), stamp, STAMP_LEN);
    }
    versions[page] = v;
    dirtied_pages++;
    recent[recent_count % recent_cap] = (uint32_t)page;
    recent_count++;
}

/* Returns 1 if the page holds what its version says it should. */
static int page_ok(uint64_t page)
{
    expected_page(page, versions[page]);
    return memcmp(scratch, mem + page * PAGE_SIZE, PAGE_SIZE) == 0;
}

/* ----------------------------------------------------------------- config */

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    if (*s == '\0' || *s == '-' || *s == '+')
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno != 0 || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static void parse_word(const char *word)
{
    if (strncmp(word, "nc_", 3) != 0)
        return;
    const char *eq = strchr(word, '=');
    if (eq == NULL) {
        say("NOVACRON-GUEST-ERROR missing value in '%s'", word);
        return;
    }
    size_t klen = (size_t)(eq - word);
    const char *val = eq + 1;
    uint64_t n;
#define KEY(name) (klen == sizeof(name) - 1 && strncmp(word, name, klen) == 0)
    if (KEY("nc_wss_mib")) {
        if (parse_u64(val, 1, 1u << 20, &n) == 0)
            cfg.wss_mib = n;
        else
            say("NOVACRON-GUEST-ERROR bad nc_wss_mib '%s' (want 1..1048576), using %" PRIu64,
                val, cfg.wss_mib);
    } else if (KEY("nc_rate_mib")) {
        if (parse_u64(val, 0, 1u << 20, &n) == 0)
            cfg.rate_mib = n;
        else
            say("NOVACRON-GUEST-ERROR bad nc_rate_mib '%s' (want 0..1048576), using %" PRIu64,
                val, cfg.rate_mib);
    } else if (KEY("nc_pattern")) {
        if (strcmp(val, "sparse") == 0)
            cfg.pattern = PATTERN_SPARSE;
        else if (strcmp(val, "full") == 0)
            cfg.pattern = PATTERN_FULL;
        else
            say("NOVACRON-GUEST-ERROR bad nc_pattern '%s' (want sparse|full), using sparse", val);
    } else if (KEY("nc_fill")) {
        if (strcmp(val, "text") == 0)
            cfg.fill = FILL_TEXT;
        else if (strcmp(val, "random") == 0)
            cfg.fill = FILL_RANDOM;
        else
            say("NOVACRON-GUEST-ERROR bad nc_fill '%s' (want text|random), using text", val);
    } else if (KEY("nc_seed")) {
        if (parse_u64(val, 0, UINT64_MAX, &n) == 0)
            cfg.seed = n;
        else
            say("NOVACRON-GUEST-ERROR bad nc_seed '%s', using 0", val);
    } else if (KEY("nc_selftest_corrupt")) {
        if (parse_u64(val, 0, 1, &n) == 0)
            cfg.selftest_corrupt = (int)n;
        else
            say("NOVACRON-GUEST-ERROR bad nc_selftest_corrupt '%s' (want 0|1), using 0", val);
    } else {
        say("NOVACRON-GUEST-ERROR unknown key '%.*s'", (int)klen, word);
    }
#undef KEY
}

static void read_cmdline(void)
{
    static char buf[4096];
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        say("NOVACRON-GUEST-ERROR cannot open /proc/cmdline: %s, using defaults", strerror(errno));
        return;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0) {
        say("NOVACRON-GUEST-ERROR cannot read /proc/cmdline: %s, using defaults", strerror(errno));
        return;
    }
    buf[n] = '\0';
    char *save = NULL;
    for (char *w = strtok_r(buf, " \t\n", &save); w != NULL; w = strtok_r(NULL, " \t\n", &save))
        parse_word(w);
}

/* ------------------------------------------------------------------- time */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
    struct timespec ts = {(time_t)(t / NS_PER_S), (long)(t % NS_PER_S)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* -------------------------------------------------------------- heartbeat */

static uint64_t checksum(void)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a 64 */
    const uint8_t *b = (const uint8_t *)versions;
    size_t len = npages * sizeof *versions;
    for (size_t i = 0; i < len; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    for (int i = 0; i < 8; i++) {
        h ^= (uint8_t)(seq >> (8 * i));
        h *= 0x100000001b3ull;
    }
    return h;
}

static void check_page(uint64_t page, uint64_t *bad_now)
{
    if (page_ok(page))
        return;
    if (!failed) {
        failed = 1;
        first_bad_page = page;
    }
    (*bad_now)++;
}

static void heartbeat(void)
{
    if (cfg.selftest_corrupt && seq == 3) {
        /* Debug knob: silently flip one byte of the page the sweep checks
         * next, as a broken migration might, without touching its version. */
        mem[sweep_cursor * PAGE_SIZE + PAGE_SIZE / 2] ^= 0xff;
        say("NOVACRON-GUEST-SELFTEST corrupted page=%" PRIu64, sweep_cursor);
    }

    uint64_t bad_now = 0;
    /* Pages dirtied since the last heartbeat: all of them, or an evenly
     * spread subset of RECENT_VERIFY_MAX when the rate is high (re-deriving a
     * page costs about as much as a full-page write). */
    uint64_t n = recent_count < recent_cap ? recent_count : recent_cap;
    uint64_t m = n < RECENT_VERIFY_MAX ? n : RECENT_VERIFY_MAX;
    for (uint64_t i = 0; i < m; i++)
        check_page(recent[(recent_count - 1 - i * n / m) % recent_cap], &bad_now);
    recent_count = 0;
    /* A random sample of the whole working set. */
    for (unsigned i = 0; i < SAMPLE_RANDOM; i++)
        check_page(below(splitmix(&sample_rng), npages), &bad_now);
    /* A sweep, so every page is checked every npages / SAMPLE_SWEEP seconds. */
    for (unsigned i = 0; i < SAMPLE_SWEEP; i++) {
        check_page(sweep_cursor, &bad_now);
        sweep_cursor = (sweep_cursor + 1) % npages;
    }

    uint64_t ms = now_ns() / 1000000ull;
    uint64_t sum = checksum();
    if (failed)
        say("NOVACRON-HEARTBEAT seq=%" PRIu64 " uptime_ms=%" PRIu64 " dirtied_pages=%" PRIu64
            " verify=FAIL checksum=%016" PRIx64 " bad_page=%" PRIu64 " bad_now=%" PRIu64,
            seq, ms, dirtied_pages, sum, first_bad_page, bad_now);
    else
        say("NOVACRON-HEARTBEAT seq=%" PRIu64 " uptime_ms=%" PRIu64 " dirtied_pages=%" PRIu64
            " verify=ok checksum=%016" PRIx64,
            seq, ms, dirtied_pages, sum);
    seq++;
}

/* ------------------------------------------------------------------- main */

static void setup_fs(void)
{
    mkdir("/proc", 0555);
    mkdir("/dev", 0755);
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0 &&
        errno != EBUSY)
        say("NOVACRON-GUEST-ERROR mount /proc: %s", strerror(errno));
    /* Optional: the archive already carries dev/console. */
    (void)mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755");
    if (fcntl(STDOUT_FILENO, F_GETFD) < 0) {
        int fd = open("/dev/console", O_RDWR | O_NOCTTY);
        if (fd >= 0) {
            dup2(fd, STDIN_FILENO);
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            if (fd > STDERR_FILENO)
                close(fd);
        }
    }
}

static void *alloc_or_null(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static int allocate(void)
{
    npages = cfg.wss_mib * (1024 * 1024 / PAGE_SIZE);
    uint64_t rate_pages = cfg.rate_mib * (1024 * 1024 / PAGE_SIZE);
    recent_cap = rate_pages + rate_pages / 2 + 2 * MAX_BATCH;
    uint64_t need = npages * PAGE_SIZE + npages * sizeof *versions + recent_cap * sizeof *recent;

    struct sysinfo si;
    if (sysinfo(&si) == 0) {
        uint64_t freeb = (uint64_t)si.freeram * si.mem_unit;
        uint64_t reserve = 16ull << 20;
        if (need + reserve > freeb) {
            say("NOVACRON-GUEST-ERROR nc_wss_mib=%" PRIu64 " nc_rate_mib=%" PRIu64
                " need %" PRIu64 " MiB but only %" PRIu64 " MiB free",
                cfg.wss_mib, cfg.rate_mib, need >> 20, freeb >> 20);
            return -1;
        }
    }
    mem = alloc_or_null(npages * PAGE_SIZE);
    versions = alloc_or_null(npages * sizeof *versions);
    recent = alloc_or_null(recent_cap * sizeof *recent);
    if (mem == NULL || versions == NULL || recent == NULL) {
        say("NOVACRON-GUEST-ERROR cannot map %" PRIu64 " MiB: %s", need >> 20, strerror(errno));
        if (mem)
            munmap(mem, npages * PAGE_SIZE);
        if (versions)
            munmap(versions, npages * sizeof *versions);
        if (recent)
            munmap(recent, recent_cap * sizeof *recent);
        mem = NULL;
        versions = NULL;
        recent = NULL;
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    init_word_slots();
    if (getpid() == 1) {
        setup_fs();
        read_cmdline();
    } else {
        /* Host test mode (not PID 1): no mounts, keys come from argv. */
        for (int i = 1; i < argc; i++)
            parse_word(argv[i]);
    }

    if (allocate() != 0) {
        cfg.wss_mib = 64;
        cfg.rate_mib = cfg.rate_mib > 64 ? 64 : cfg.rate_mib;
        say("NOVACRON-GUEST-ERROR falling back to nc_wss_mib=64 nc_rate_mib=%" PRIu64,
            cfg.rate_mib);
        while (allocate() != 0) {
            say("NOVACRON-GUEST-ERROR cannot allocate the working set; idling");
            sleep_until(now_ns() + 10 * NS_PER_S);
        }
    }

    uint64_t fill_start = now_ns();
    for (uint64_t p = 0; p < npages; p++)
        write_initial(p);
    uint64_t fill_ms = (now_ns() - fill_start) / 1000000ull;
    dirty_rng = cfg.seed ^ 0x5851f42d4c957f2dull;
    sample_rng = cfg.seed ^ 0x14057b7ef767814full;

    say("NOVACRON-GUEST-READY wss_mib=%" PRIu64 " rate_mib=%" PRIu64 " pattern=%s fill=%s"
        " seed=%" PRIu64 " fill_ms=%" PRIu64,
        cfg.wss_mib, cfg.rate_mib, cfg.pattern == PATTERN_FULL ? "full" : "sparse",
        cfg.fill == FILL_TEXT ? "text" : "random", cfg.seed, fill_ms);

    const uint64_t rate_pages = cfg.rate_mib * (1024 * 1024 / PAGE_SIZE);
    const uint64_t max_debt = rate_pages / 10 + MAX_BATCH; /* ~100 ms of work */
    uint64_t start = now_ns();
    uint64_t done = 0; /* pages dirtied since `start` */
    uint64_t next_hb = start;

    for (;;) {
        uint64_t now = now_ns();
        if (now >= next_hb) {
            heartbeat();
            next_hb += NS_PER_S;
            now = now_ns();
            if (next_hb <= now) /* paused or starved: do not print a burst */
                next_hb = now + NS_PER_S;
        }
        uint64_t wake = next_hb;
        if (rate_pages > 0) {
            uint64_t target =
                (uint64_t)((unsigned __int128)rate_pages * (now - start) / NS_PER_S);
            if (target > done + max_debt) /* do not catch up after a stall */
                done = target - max_debt;
            uint64_t due = target - done;
            if (due > MAX_BATCH)
                due = MAX_BATCH;
            for (uint64_t i = 0; i < due; i++)
                dirty_page(below(splitmix(&dirty_rng), npages));
            done += due;
            if (done < target)
                continue; /* behind schedule: keep going without sleeping */
            uint64_t tick = now + TICK_NS;
            if (tick < wake)
                wake = tick;
        }
        sleep_until(wake);
    }
}
