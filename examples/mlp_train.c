/*
 * mlp_train.c - ag_mlp_train: a small multi-layer perceptron trained with
 * plain SGD on a synthetic classification set it generates itself (fixed
 * seed), forward and backward written out in C, streaming to altgradd through
 * libaltgrad: amax statistics of activations and their gradients, and a
 * gradient snapshot of every weight tensor each step. `make demo` runs it.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad/altgrad.h"

#define IN_DIM 8
#define CLASSES 4
#define SAMPLES 2048

typedef struct options {
    uint64_t steps;
    float lr;
    size_t hidden;
    size_t batch;
    uint64_t seed;
    uint64_t print_every;
    const char *run;
    const char *ingest_url;
    const char *query_url;
    int policy; /* ag_queue_policy */
    int resume; /* continue the newest run of that name */
} options;

/* A fully connected layer: out = W in + b, W is out_dim x in_dim row-major. */
typedef struct layer {
    const char *name; /* "fc1" */
    char wname[32], bname[32], act_name[32], grad_name[32];
    size_t in_dim, out_dim;
    float *w, *b, *gw, *gb;
} layer;

typedef struct model {
    layer fc[3];
    /* per-batch buffers: pre-activations z, activations a, their gradients */
    float *z1, *a1, *z2, *a2, *logits, *dlogits, *da2, *da1, *dz;
} model;

/* splitmix64: small, seeded, the same stream on every machine. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float rng_uniform(uint64_t *s) {
    return (float)((double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

static void usage(FILE *f) {
    fputs("usage: ag_mlp_train [--steps N] [--lr F] [--hidden N] [--batch N] [--seed N]\n"
          "                    [--run NAME] [--ingest URL] [--query URL] [--print-every N]\n"
          "                    [--policy block|drop] [--resume]\n"
          "Trains a 3-layer MLP (tanh, relu) with SGD on synthetic data and streams\n"
          "activation/gradient amax statistics and weight-gradient snapshots to altgradd.\n"
          "--policy block (default) waits when the send queue is full, so nothing is lost;\n"
          "drop never waits and counts what it dropped.\n"
          "A run name another launch already used becomes NAME.2 (NAME.3 ...); the first\n"
          "line says the name used. --resume continues the newest run of that name, its\n"
          "steps numbered on from the run's last step.\n"
          "Exit status: 0 done, every message confirmed by the daemon; 1 failure; 2 usage;\n"
          "3 trained, but messages were never confirmed by the daemon (the summary line's\n"
          "'undelivered' count: no daemon at the URL, or it went away).\n",
          f);
}

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out) {
    char *end;
    unsigned long long v;
    if (s == NULL || *s < '0' || *s > '9') return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_options(int argc, char **argv, options *o) {
    int i;
    o->steps = 200;
    o->lr = 0.1f;
    o->hidden = 32;
    o->batch = 64;
    o->seed = 42;
    o->print_every = 0;
    o->run = "mlp-demo";
    o->ingest_url = NULL;
    o->query_url = NULL;
    o->policy = AG_QUEUE_BLOCK;
    o->resume = 0;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t u = 0;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(a, "--resume") == 0) {
            o->resume = 1;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "ag_mlp_train: unknown option or missing value: %s\n", a);
            return -1;
        }
        i++;
        if (strcmp(a, "--steps") == 0 && parse_u64(v, 1, 10000000, &u) == 0) {
            o->steps = u;
        } else if (strcmp(a, "--hidden") == 0 && parse_u64(v, 1, 4096, &u) == 0) {
            o->hidden = (size_t)u;
        } else if (strcmp(a, "--batch") == 0 && parse_u64(v, 1, SAMPLES, &u) == 0) {
            o->batch = (size_t)u;
        } else if (strcmp(a, "--seed") == 0 && parse_u64(v, 0, UINT64_MAX, &u) == 0) {
            o->seed = u;
        } else if (strcmp(a, "--print-every") == 0 && parse_u64(v, 1, UINT64_MAX, &u) == 0) {
            o->print_every = u;
        } else if (strcmp(a, "--lr") == 0) {
            char *end;
            double lr;
            errno = 0;
            lr = strtod(v, &end);
            if (errno != 0 || *end != '\0' || !(lr > 0.0 && lr < 100.0)) {
                fprintf(stderr, "ag_mlp_train: --lr wants a number in (0, 100), not '%s'\n", v);
                return -1;
            }
            o->lr = (float)lr;
        } else if (strcmp(a, "--run") == 0 && *v != '\0' && strlen(v) <= AG_NAME_MAX) {
            o->run = v;
        } else if (strcmp(a, "--ingest") == 0 && *v != '\0') {
            o->ingest_url = v;
        } else if (strcmp(a, "--query") == 0 && *v != '\0') {
            o->query_url = v;
        } else if (strcmp(a, "--policy") == 0 && strcmp(v, "block") == 0) {
            o->policy = AG_QUEUE_BLOCK;
        } else if (strcmp(a, "--policy") == 0 && strcmp(v, "drop") == 0) {
            o->policy = AG_QUEUE_DROP;
        } else {
            fprintf(stderr, "ag_mlp_train: bad option or value: %s %s\n", a, v);
            return -1;
        }
    }
    if (o->print_every == 0) o->print_every = o->steps >= 10 ? o->steps / 10 : 1;
    return 0;
}

/* ------------------------------------------------------------------------
 * Data: inputs uniform in [-1, 1]^8, the label is the argmax of a fixed
 * random linear "teacher" applied to a nonlinear feature of the input, so
 * a hidden layer is needed to fit it well.
 * ---------------------------------------------------------------------- */
static void make_data(uint64_t seed, float *x, int *y) {
    float teacher[CLASSES][IN_DIM];
    uint64_t s = seed ^ 0xDA7A5E7ull;
    size_t i, j, k;
    for (k = 0; k < CLASSES; k++)
        for (j = 0; j < IN_DIM; j++) teacher[k][j] = rng_uniform(&s);
    for (i = 0; i < SAMPLES; i++) {
        float best = -INFINITY;
        for (j = 0; j < IN_DIM; j++) x[i * IN_DIM + j] = rng_uniform(&s);
        y[i] = 0;
        for (k = 0; k < CLASSES; k++) {
            float score = 0;
            for (j = 0; j < IN_DIM; j++) {
                float v = x[i * IN_DIM + j];
                score += teacher[k][j] * (j % 2 ? v * v : v);
            }
            if (score > best) {
                best = score;
                y[i] = (int)k;
            }
        }
    }
}

static int layer_init(layer *l, const char *name, size_t in_dim, size_t out_dim, uint64_t *s) {
    size_t i;
    float bound = sqrtf(6.0f / (float)(in_dim + out_dim)); /* Glorot uniform */
    memset(l, 0, sizeof *l);
    l->name = name;
    l->in_dim = in_dim;
    l->out_dim = out_dim;
    snprintf(l->wname, sizeof l->wname, "%s.weight", name);
    snprintf(l->bname, sizeof l->bname, "%s.bias", name);
    snprintf(l->act_name, sizeof l->act_name, "%s.out", name);
    snprintf(l->grad_name, sizeof l->grad_name, "%s.out.grad", name);
    l->w = malloc(in_dim * out_dim * sizeof *l->w);
    l->gw = malloc(in_dim * out_dim * sizeof *l->gw);
    l->b = calloc(out_dim, sizeof *l->b);
    l->gb = calloc(out_dim, sizeof *l->gb);
    if (!l->w || !l->gw || !l->b || !l->gb) return AG_ENOMEM;
    for (i = 0; i < in_dim * out_dim; i++) l->w[i] = bound * rng_uniform(s);
    return AG_OK;
}

static void layer_free(layer *l) {
    free(l->w);
    free(l->gw);
    free(l->b);
    free(l->gb);
}

/* out[r] = W in[r] + b for each of rows inputs. */
static void layer_forward(const layer *l, const float *in, float *out, size_t rows) {
    size_t r, o, i;
    for (r = 0; r < rows; r++)
        for (o = 0; o < l->out_dim; o++) {
            float acc = l->b[o];
            const float *wrow = l->w + o * l->in_dim, *x = in + r * l->in_dim;
            for (i = 0; i < l->in_dim; i++) acc += wrow[i] * x[i];
            out[r * l->out_dim + o] = acc;
        }
}

/* Given dout (rows x out_dim) and the layer input, fills gw, gb and, when
 * din is not NULL, din = dout W. */
static void layer_backward(layer *l, const float *in, const float *dout, float *din, size_t rows) {
    size_t r, o, i;
    memset(l->gw, 0, l->in_dim * l->out_dim * sizeof *l->gw);
    memset(l->gb, 0, l->out_dim * sizeof *l->gb);
    if (din != NULL) memset(din, 0, rows * l->in_dim * sizeof *din);
    for (r = 0; r < rows; r++)
        for (o = 0; o < l->out_dim; o++) {
            float d = dout[r * l->out_dim + o];
            float *gwrow = l->gw + o * l->in_dim;
            const float *x = in + r * l->in_dim, *wrow = l->w + o * l->in_dim;
            l->gb[o] += d;
            for (i = 0; i < l->in_dim; i++) {
                gwrow[i] += d * x[i];
                if (din != NULL) din[r * l->in_dim + i] += d * wrow[i];
            }
        }
}

static void sgd_step(layer *l, float lr) {
    size_t i;
    for (i = 0; i < l->in_dim * l->out_dim; i++) l->w[i] -= lr * l->gw[i];
    for (i = 0; i < l->out_dim; i++) l->b[i] -= lr * l->gb[i];
}

/* Softmax cross-entropy over rows; fills dlogits (mean over the batch) and
 * returns the mean loss; *correct gets the argmax hits. */
static double softmax_xent(const float *logits, const int *labels, float *dlogits, size_t rows,
                           size_t *correct) {
    double loss = 0;
    size_t r, k;
    *correct = 0;
    for (r = 0; r < rows; r++) {
        const float *z = logits + r * CLASSES;
        float *dz = dlogits + r * CLASSES;
        float m = z[0], sum = 0;
        size_t best = 0;
        for (k = 1; k < CLASSES; k++) {
            if (z[k] > m) m = z[k];
            if (z[k] > z[best]) best = k;
        }
        for (k = 0; k < CLASSES; k++) {
            dz[k] = expf(z[k] - m);
            sum += dz[k];
        }
        for (k = 0; k < CLASSES; k++) {
            dz[k] /= sum;
            if ((int)k == labels[r]) loss -= log((double)dz[k] + 1e-12);
            dz[k] = (dz[k] - ((int)k == labels[r] ? 1.0f : 0.0f)) / (float)rows;
        }
        if ((int)best == labels[r]) (*correct)++;
    }
    return loss / (double)rows;
}

/* Counts logging calls the client refused because its queue was full
 * (AG_EAGAIN: dropped and counted by the client, training goes on). */
static int logged(int rc, uint64_t *dropped) {
    if (rc == AG_EAGAIN) {
        (*dropped)++;
        return AG_OK;
    }
    return rc;
}

/* The last step the daemon holds of this client's run (0 when it cannot say). */
static uint64_t resumed_after(ag_client *client) {
    ag_run_list *runs = NULL;
    uint64_t last = 0;
    size_t i;
    if (ag_client_runs(client, &runs) != AG_OK) return 0;
    for (i = 0; i < runs->n; i++)
        if (strcmp(runs->items[i].name, ag_client_run(client)) == 0)
            last = runs->items[i].last_step;
    ag_free(runs);
    return last;
}

int main(int argc, char **argv) {
    options o;
    model m;
    ag_client *client = NULL;
    ag_client_opts copts;
    ag_client_stats cstats;
    float *x = NULL, *xb = NULL;
    int *y = NULL, *yb = NULL;
    uint64_t s, step, dropped = 0;
    int64_t undelivered = 0;
    size_t H, B, i, j, k;
    uint64_t first = 1;
    int rc = AG_OK, started, exit_code = 1, flushed, have_stats;
    char note[320] = "", used[AG_NAME_MAX + 1];

    memset(&m, 0, sizeof m);
    if (parse_options(argc, argv, &o) != 0) return 2;
    H = o.hidden;
    B = o.batch;
    s = o.seed;

    x = malloc(SAMPLES * IN_DIM * sizeof *x);
    y = malloc(SAMPLES * sizeof *y);
    xb = malloc(B * IN_DIM * sizeof *xb);
    yb = malloc(B * sizeof *yb);
    m.z1 = malloc(B * H * sizeof *m.z1);
    m.a1 = malloc(B * H * sizeof *m.a1);
    m.z2 = malloc(B * H * sizeof *m.z2);
    m.a2 = malloc(B * H * sizeof *m.a2);
    m.logits = malloc(B * CLASSES * sizeof *m.logits);
    m.dlogits = malloc(B * CLASSES * sizeof *m.dlogits);
    m.da2 = malloc(B * H * sizeof *m.da2);
    m.da1 = malloc(B * H * sizeof *m.da1);
    m.dz = malloc(B * H * sizeof *m.dz);
    if (!x || !y || !xb || !yb || !m.z1 || !m.a1 || !m.z2 || !m.a2 || !m.logits || !m.dlogits ||
        !m.da2 || !m.da1 || !m.dz) {
        rc = AG_ENOMEM;
        goto fail;
    }
    make_data(o.seed, x, y);
    if ((rc = layer_init(&m.fc[0], "fc1", IN_DIM, H, &s)) != AG_OK ||
        (rc = layer_init(&m.fc[1], "fc2", H, H, &s)) != AG_OK ||
        (rc = layer_init(&m.fc[2], "fc3", H, CLASSES, &s)) != AG_OK)
        goto fail;

    memset(&copts, 0, sizeof copts);
    copts.ingest_url = o.ingest_url;
    copts.query_url = o.query_url;
    copts.run = o.run;
    copts.policy = o.policy;
    copts.resume = o.resume;
    rc = ag_client_open(&client, &copts);
    if (rc != AG_OK) {
        fprintf(stderr, "ag_mlp_train: cannot open the altgrad client: %s\n", ag_strerror(rc));
        goto fail;
    }
    /* Start the run and learn the name the daemon files it under: NAME.2 ...
     * when another launch has NAME. Without an answer, training goes on. */
    started = ag_client_start_run(client, 5000);
    if (started != AG_OK)
        snprintf(note, sizeof note, " (not confirmed by the daemon: %s)", ag_strerror(started));
    else if (strcmp(ag_client_run(client), o.run) != 0)
        snprintf(note, sizeof note,
                 o.resume ? " (the newest run of '%.255s', resumed)"
                          : " (asked for '%.255s', which another launch has)",
                 o.run);
    printf("ag_mlp_train: run '%s'%s, MLP %d-%zu-%zu-%d (tanh, relu), %d samples, batch %zu, "
           "lr %g, %llu steps\n",
           ag_client_run(client), note, IN_DIM, H, H, CLASSES, SAMPLES, B, (double)o.lr,
           (unsigned long long)o.steps);
    /* A resumed run goes on after its last step (a real trainer would also
     * load its checkpoint; this one starts its weights afresh). */
    if (o.resume && started == AG_OK) first = resumed_after(client) + 1;
    fflush(stdout);

    for (step = first; step < first + o.steps; step++) {
        size_t correct;
        double loss;
        layer *fc = m.fc;

        /* a random mini-batch */
        for (i = 0; i < B; i++) {
            size_t idx = (size_t)(rng_next(&s) % SAMPLES);
            memcpy(xb + i * IN_DIM, x + idx * IN_DIM, IN_DIM * sizeof *xb);
            yb[i] = y[idx];
        }
        /* forward: a1 = tanh(fc1 x), a2 = relu(fc2 a1), logits = fc3 a2 */
        layer_forward(&fc[0], xb, m.z1, B);
        for (j = 0; j < B * H; j++) m.a1[j] = tanhf(m.z1[j]);
        layer_forward(&fc[1], m.a1, m.z2, B);
        for (j = 0; j < B * H; j++) m.a2[j] = m.z2[j] > 0 ? m.z2[j] : 0;
        layer_forward(&fc[2], m.a2, m.logits, B);
        loss = softmax_xent(m.logits, yb, m.dlogits, B, &correct);

        /* backward */
        layer_backward(&fc[2], m.a2, m.dlogits, m.da2, B);
        for (j = 0; j < B * H; j++) m.dz[j] = m.z2[j] > 0 ? m.da2[j] : 0;
        layer_backward(&fc[1], m.a1, m.dz, m.da1, B);
        for (j = 0; j < B * H; j++) m.da1[j] *= 1.0f - m.a1[j] * m.a1[j];
        layer_backward(&fc[0], xb, m.da1, NULL, B);

        /* stream: activation and activation-gradient amax, then snapshots */
        if ((rc = logged(
                 ag_client_log_stats(client, step, fc[0].act_name, AG_ROLE_ACTIVATION, m.a1, B * H),
                 &dropped)) != AG_OK ||
            (rc = logged(
                 ag_client_log_stats(client, step, fc[1].act_name, AG_ROLE_ACTIVATION, m.a2, B * H),
                 &dropped)) != AG_OK ||
            (rc = logged(ag_client_log_stats(client, step, fc[2].act_name, AG_ROLE_ACTIVATION,
                                             m.logits, B * CLASSES),
                         &dropped)) != AG_OK ||
            (rc = logged(ag_client_log_stats(client, step, fc[2].grad_name, AG_ROLE_GRADIENT,
                                             m.dlogits, B * CLASSES),
                         &dropped)) != AG_OK ||
            (rc = logged(
                 ag_client_log_stats(client, step, fc[1].grad_name, AG_ROLE_GRADIENT, m.dz, B * H),
                 &dropped)) != AG_OK ||
            (rc = logged(
                 ag_client_log_stats(client, step, fc[0].grad_name, AG_ROLE_GRADIENT, m.da1, B * H),
                 &dropped)) != AG_OK) {
            fprintf(stderr, "ag_mlp_train: logging statistics failed: %s\n", ag_strerror(rc));
            goto fail;
        }
        for (k = 0; k < 3; k++) {
            layer *l = &fc[k];
            rc = logged(ag_client_log_sgd(client, step, l->wname, l->w, l->gw,
                                          l->in_dim * l->out_dim, o.lr),
                        &dropped);
            if (rc == AG_OK)
                rc =
                    logged(ag_client_log_sgd(client, step, l->bname, l->b, l->gb, l->out_dim, o.lr),
                           &dropped);
            if (rc != AG_OK) {
                fprintf(stderr, "ag_mlp_train: logging a snapshot of %s failed: %s\n", l->name,
                        ag_strerror(rc));
                goto fail;
            }
            sgd_step(l, o.lr);
        }
        if (step % o.print_every == 0 || step == first || step == first + o.steps - 1)
            printf("step %6llu  loss %.4f  batch accuracy %.3f\n", (unsigned long long)step, loss,
                   (double)correct / (double)B);
    }
    fflush(stdout);

    /* end the run, then wait (bounded) until the daemon confirms it stored
     * every message; close says how many it never confirmed */
    rc = ag_client_end_run(client);
    if (rc != AG_OK) {
        fprintf(stderr, "ag_mlp_train: ending the run failed: %s\n", ag_strerror(rc));
        goto fail;
    }
    flushed = ag_client_flush(client, 10000);
    if (flushed != AG_OK)
        fprintf(stderr, "ag_mlp_train: the daemon did not confirm every message: %s%s%s\n",
                ag_strerror(flushed), *ag_client_last_error(client) ? ": " : "",
                ag_client_last_error(client));
    have_stats = ag_client_get_stats(client, &cstats) == AG_OK;
    snprintf(used, sizeof used, "%s", ag_client_run(client)); /* gone with the client */
    undelivered = ag_client_close(client);
    client = NULL;
    if (have_stats)
        printf("ag_mlp_train: sent %llu messages (%llu snapshots, %llu statistics records), "
               "dropped %llu, undelivered %lld\n",
               (unsigned long long)cstats.sent, (unsigned long long)cstats.snapshots,
               (unsigned long long)cstats.records, (unsigned long long)cstats.dropped,
               (long long)undelivered);
    if (dropped > 0)
        fprintf(stderr, "ag_mlp_train: %llu logging calls dropped (client queue full)\n",
                (unsigned long long)dropped);
    if (undelivered > 0) {
        fprintf(stderr,
                "ag_mlp_train: %lld messages were never confirmed by the daemon: "
                "its record of run '%s' is incomplete\n",
                (long long)undelivered, used);
        exit_code = 3;
    } else {
        exit_code = 0;
    }
fail:
    if (rc == AG_ENOMEM) fprintf(stderr, "ag_mlp_train: out of memory\n");
    ag_client_close(client);
    for (k = 0; k < 3; k++) layer_free(&m.fc[k]);
    free(m.z1);
    free(m.a1);
    free(m.z2);
    free(m.a2);
    free(m.logits);
    free(m.dlogits);
    free(m.da2);
    free(m.da1);
    free(m.dz);
    free(x);
    free(y);
    free(xb);
    free(yb);
    return exit_code;
}
