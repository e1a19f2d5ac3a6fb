/* test_safetensors.c - the safetensors reader on hand-made headers (st_open_buffer, the
 * fuzz harness's entry) and on the fixture (st_open == st_open_buffer), plus the config.json
 * parsers on edge values the fuzzers pointed at (numbers beyond int / float range), and
 * malformed .npy headers (npy_parse).
 * ctest: labels=unit */
#include <jansson.h>

#include "draft_config.h"
#include "qwen3.h"
#include "safetensors.h"
#include "test.h"

/* u64 length + header JSON + `data` zero bytes, in a static buffer */
static const uint8_t *file_of(const char *header, size_t data, size_t *size) {
    static uint8_t buf[4096];
    size_t h = strlen(header);
    DS_ASSERT(8 + h + data <= sizeof buf);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    memset(buf + 8 + h, 0, data);
    *size = 8 + h + data;
    return buf;
}

/* the header must be rejected with an error containing `needle` */
static void bad(const char *header, size_t data, const char *needle) {
    char err[DS_ERR_LEN] = "";
    size_t n;
    const uint8_t *b = file_of(header, data, &n);
    StModel m;
    ds_status rc = st_open_buffer(&m, b, n, "x.safetensors", err);
    CHECK_MSG(rc != DS_OK, "accepted: %s", header);
    if (rc == DS_OK) { st_close(&m); return; }
    CHECK_MSG(strstr(err, "x.safetensors") && strstr(err, needle), "'%s' -> '%s' (wanted '%s')", header, err, needle);
}

static void test_good_headers(void) {
    char err[DS_ERR_LEN];
    size_t n;
    StModel m;
    /* scalar, empty and ordinary tensors; metadata ignored; exact fit */
    const uint8_t *b = file_of("{\"__metadata__\":{\"format\":\"pt\"},\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                               "\"e\":{\"dtype\":\"BF16\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
                               "\"w\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[4,12]}}", 12, &n);
    CHECK_OK(st_open_buffer(&m, b, n, "x.safetensors", err), err);
    CHECK(m.n_tensors == 3);
    const StTensor *w = st_find(&m, "w"), *s = st_find(&m, "s");
    CHECK(w && w->dtype == DS_F16 && w->n_dims == 2 && w->nbytes == 8 && (const uint8_t *)w->data == b + n - 8);
    CHECK(s && s->n_dims == 0 && s->nbytes == 4);
    CHECK(st_find(&m, "__metadata__") == NULL && st_find(&m, "zz") == NULL);
    /* st_take: shape must match; an unclaimed tensor is reported by name */
    int64_t shape[2] = {2, 2}, wrong[2] = {4, 1};
    CHECK(st_take(&m, "w", 2, wrong, NULL, err) == DS_ECKPT && strstr(err, "'w'"));
    CHECK_OK(st_take(&m, "w", 2, shape, NULL, err), err);
    CHECK(st_check_all_taken(&m, err) == DS_ECKPT && strstr(err, "unexpected tensor"));
    st_close(&m);
    /* empty header object */
    b = file_of("{}", 0, &n);
    CHECK_OK(st_open_buffer(&m, b, n, "x.safetensors", err), err);
    CHECK(m.n_tensors == 0 && st_find(&m, "a") == NULL);
    CHECK_OK(st_check_all_taken(&m, err), err);
    st_close(&m);
}

static void test_bad_headers(void) {
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "bad header JSON");
    bad("[1,2]", 0, "not a JSON object");
    bad("{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "unsupported dtype 'F64'");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 4, "truncated");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "do not match");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, "bad shape");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "dims");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,0]}}", 0, "bad shape");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "bad data_offsets");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "data_offsets[2]");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,-4]}}", 4, "bad data_offsets");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551615]}}", 4, "bad header JSON");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[9223372036854775800,9223372036854775804]}}", 4, "truncated");
    bad("{\"a\":7}", 0, "'a'");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
        "bad header JSON"); /* duplicate key */
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
        "overlap");
    /* the length field alone */
    char err[DS_ERR_LEN];
    StModel m;
    static const uint8_t len_only[8] = {4, 0, 0, 0, 0, 0, 0, 0};
    CHECK(st_open_buffer(&m, len_only, 8, "x.safetensors", err) == DS_EFORMAT && strstr(err, "larger than the file"));
    CHECK(st_open_buffer(&m, len_only, 3, "x.safetensors", err) == DS_EFORMAT && strstr(err, "truncated"));
}

/* the fixture through st_open (mmap) and st_open_buffer (memory): the same tensors, and
 * st_write of what was read gives back a file that reads the same */
static void test_fixture_both_ways(void) {
    char err[DS_ERR_LEN], *buf;
    size_t len;
    const char *path = test_data("tiny-qwen3/target/model.safetensors");
    StModel a, b, c;
    CHECK_OK(st_open(&a, path, err), err);
    CHECK_OK(ds_read_file(path, &buf, &len, err), err);
    CHECK_OK(st_open_buffer(&b, buf, len, path, err), err);
    CHECK(a.n_tensors == b.n_tensors && a.n_tensors == 46);
    StWriteTensor w[64];
    int same = 1;
    for (int i = 0; i < a.n_tensors && i < 64; i++) {
        const StTensor *x = &a.tensors[i], *y = &b.tensors[i];
        same &= strcmp(x->name, y->name) == 0 && x->dtype == y->dtype && x->nbytes == y->nbytes &&
                memcmp(x->shape, y->shape, sizeof x->shape) == 0 && memcmp(x->data, y->data, x->nbytes) == 0;
        w[i] = (StWriteTensor){.name = x->name, .dtype = x->dtype, .n_dims = x->n_dims, .data = x->data};
        memcpy(w[i].shape, x->shape, sizeof x->shape);
    }
    CHECK_MSG(same, "st_open and st_open_buffer disagree");
    const char *out = test_tmpdir("st_roundtrip");
    char p[1200];
    snprintf(p, sizeof p, "%s/m.safetensors", out);
    CHECK_OK(st_write(p, w, a.n_tensors, NULL, err), err);
    CHECK_OK(st_open(&c, p, err), err);
    same = c.n_tensors == a.n_tensors;
    for (int i = 0; same && i < a.n_tensors; i++)
        same &= strcmp(c.tensors[i].name, a.tensors[i].name) == 0 && memcmp(c.tensors[i].data, a.tensors[i].data, a.tensors[i].nbytes) == 0;
    CHECK_MSG(same, "st_write round trip differs");
    st_close(&a); st_close(&b); st_close(&c);
    ds_free(buf);
}

/* ---- config.json edge values ---- */

static ds_status parse_target(const char *text, Qwen3Config *c, char *err) {
    json_error_t je;
    json_t *root = json_loads(text, 0, &je);
    DS_ASSERT(root);
    ds_status rc = qwen3_config_parse(c, root, "config.json", err);
    json_decref(root);
    return rc;
}

#define BASE "\"architectures\":[\"Qwen3ForCausalLM\"],\"vocab_size\":512,\"hidden_size\":64,\"intermediate_size\":160," \
             "\"num_hidden_layers\":4,\"num_key_value_heads\":2,\"rms_norm_eps\":1e-6"

static void test_config_edges(void) {
    char err[DS_ERR_LEN];
    Qwen3Config c;
    CHECK_OK(parse_target("{" BASE ",\"num_attention_heads\":4,\"eos_token_id\":[1,2]}", &c, err), err);
    CHECK(c.head_dim == 16 && c.rope_theta == 1000000.0f && c.n_eos == 2 && c.tie_word_embeddings);
    /* rope theta beyond float range: would become inf */
    CHECK(parse_target("{" BASE ",\"num_attention_heads\":4,\"rope_theta\":1e39}", &c, err) == DS_EFORMAT && strstr(err, "finite"));
    /* heads * head_dim beyond int */
    CHECK(parse_target("{" BASE ",\"num_attention_heads\":1073741824,\"num_key_value_heads\":1,\"head_dim\":512}", &c, err) ==
              DS_EFORMAT && strstr(err, "too large"));
    /* token ids beyond int are ignored, not wrapped */
    CHECK_OK(parse_target("{" BASE ",\"num_attention_heads\":4,\"eos_token_id\":[4294967297,-1,3],\"bos_token_id\":4294967296}", &c, err), err);
    CHECK(c.n_eos == 1 && c.eos_token_ids[0] == 3 && c.bos_token_id == -1);
    CHECK(parse_target("{" BASE ",\"num_attention_heads\":4294967300}", &c, err) == DS_EFORMAT && strstr(err, "'num_attention_heads'"));
}

static ds_status parse_draft(const char *extra, DraftConfig *d, char *err) {
    char text[2048];
    snprintf(text, sizeof text,
             "{\"architectures\":[\"Qwen3DSparkModel\"],\"vocab_size\":512,\"hidden_size\":64,\"intermediate_size\":160,"
             "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"rms_norm_eps\":1e-6,"
             "\"mask_token_id\":5,\"markov_rank\":0,\"enable_confidence_head\":false%s}", extra);
    json_error_t je;
    json_t *root = json_loads(text, 0, &je);
    DS_ASSERT(root);
    ds_status rc = draft_config_parse(d, root, "draft.json", err);
    json_decref(root);
    return rc;
}

static void test_draft_config_edges(void) {
    char err[DS_ERR_LEN];
    DraftConfig d;
    CHECK_OK(parse_draft(",\"block_size\":16,\"target_layer_ids\":[-1,1,2],\"num_anchors\":null", &d, err), err);
    CHECK(d.block_size == 16 && d.n_target_layers == 3 && d.target_layer_ids[0] == -1 && d.num_anchors == 512);
    /* 2^32 + 5 would have wrapped to a valid 5 */
    CHECK(parse_draft(",\"block_size\":4294967301,\"target_layer_ids\":[1]", &d, err) == DS_EFORMAT && strstr(err, "'block_size'"));
    CHECK(parse_draft(",\"block_size\":4,\"target_layer_ids\":[4294967296]", &d, err) == DS_EFORMAT && strstr(err, "target_layer_ids[0]"));
    CHECK(parse_draft(",\"block_size\":4,\"target_layer_ids\":[-9223372036854775807]", &d, err) == DS_EFORMAT &&
          strstr(err, "minimum -1"));
    CHECK(parse_draft(",\"block_size\":4,\"target_layer_ids\":[1],\"num_anchors\":-4294967296", &d, err) == DS_EFORMAT &&
          strstr(err, "'num_anchors'"));
    CHECK(parse_draft(",\"block_size\":4,\"target_layer_ids\":[2,1]", &d, err) == DS_EFORMAT && strstr(err, "increasing"));
}

/* .npy: a header missing the ':' after a key crashed the old parser (NULL + 1); a shape whose
 * element count wraps around size_t was accepted with numel 0 */
static void npy_bad(const char *dict, size_t data, const char *needle) {
    uint8_t buf[512];
    size_t h = strlen(dict);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (uint8_t)h;
    buf[9] = 0;
    memcpy(buf + 10, dict, h);
    memset(buf + 10 + h, 0, data);
    char err[DS_ERR_LEN];
    NpyArray a;
    ds_status rc = npy_parse(buf, 10 + h + data, "x.npy", &a, err);
    CHECK_MSG(rc == DS_EFORMAT && strstr(err, "x.npy") && strstr(err, needle), "%s -> %d '%s'", dict, rc, err);
    if (rc == DS_OK) npy_free(&a);
}

static void test_npy_malformed(void) {
    npy_bad("{'descr': '<f4', 'shape': (1,), 'fortran_order'}", 4, "bad header");
    npy_bad("{'fortran_order': False, 'shape': (1,), 'descr'}", 4, "bad header");
    npy_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", 0, "bad shape");
    npy_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, }", 24, "bad shape");
    npy_bad("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", 8, "unsupported dtype");
    npy_bad("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", 4, "fortran_order");
    npy_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 8, "truncated data");
    /* the good case of the same builder: (2, 3) float32 */
    uint8_t buf[512];
    const char *dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    size_t h = strlen(dict);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (uint8_t)h;
    buf[9] = 0;
    memcpy(buf + 10, dict, h);
    memset(buf + 10 + h, 0, 24);
    char err[DS_ERR_LEN];
    NpyArray a;
    CHECK_OK(npy_parse(buf, 10 + h + 24, "x.npy", &a, err), err);
    CHECK(a.n_dims == 2 && a.shape[0] == 2 && a.shape[1] == 3 && a.numel == 6 && a.dtype == DS_F32);
    npy_free(&a);
}

int main(void) {
    RUN(test_npy_malformed);
    RUN(test_good_headers);
    RUN(test_bad_headers);
    RUN(test_fixture_both_ways);
    RUN(test_config_edges);
    RUN(test_draft_config_edges);
    return test_summary();
}
