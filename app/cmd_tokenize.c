/* cmd_tokenize.c - `dspark tokenize`: the token ids of a text file (byte for byte: nothing is
 * stripped; an empty file prints an empty line) or of a chat (a JSON array of {role, content}
 * rendered with the chat template and add_generation_prompt). DIR may hold only tokenizer files. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "chat.h"
#include "commands.h"
#include "tokenizer.h"

int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *text_file = NULL, *chat_file = NULL;
    bool think = false;
    ArgSpec specs[] = {
        {"--model", ARG_STR, &model, "DIR", "directory with tokenizer.json (a model or just a tokenizer)", 0, -1},
        {"--text-file", ARG_STR, &text_file, "F", "tokenize this file's bytes", 0, -1},
        {"--chat-file", ARG_STR, &chat_file, "F", "a JSON array of {role, content} messages, chat template applied", 0, -1},
        {"--think", ARG_FLAG, &think, NULL, "with --chat-file: enable thinking (default: disabled)", 0, -1},
    };
    int n_specs = sizeof specs / sizeof specs[0];
    int rc = args_parse("tokenize", "--model DIR (--text-file F | --chat-file F) [--think]", specs, n_specs, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    if (!model || !text_file == !chat_file) {
        fprintf(stderr, "dspark tokenize: --model and exactly one of --text-file, --chat-file are required (see --help)\n");
        return 2;
    }
    char err[DS_ERR_LEN];
    Tokenizer *tok = NULL;
    char *data = NULL, *rendered = NULL;
    int32_t *ids = NULL;
    int n = 0, status = 1;
    size_t len;
    json_t *root = NULL;
    if (ds_read_file(text_file ? text_file : chat_file, &data, &len, err)) goto fail;
    if (tokenizer_load(&tok, model, err)) goto fail;
    if (chat_file) {
        json_error_t je;
        root = json_loadb(data, len, 0, &je);
        if (!root) { ds_err(err, DS_EFORMAT, "%s: bad JSON at line %d column %d: %s", chat_file, je.line, je.column, je.text); goto fail; }
        if (!json_is_array(root) || json_array_size(root) == 0 || json_array_size(root) > 4096) {
            ds_err(err, DS_EFORMAT, "%s: expected a non-empty JSON array of {role, content} messages", chat_file);
            goto fail;
        }
        size_t k = json_array_size(root);
        ChatMessage *m = ds_malloc(sizeof(ChatMessage) * k);
        for (size_t i = 0; i < k; i++) {
            json_t *e = json_array_get(root, i);
            m[i].role = json_string_value(json_object_get(e, "role"));
            m[i].content = json_string_value(json_object_get(e, "content"));
            if (!m[i].role || !m[i].content) {
                ds_free(m);
                ds_err(err, DS_EFORMAT, "%s: message %zu needs string 'role' and 'content'", chat_file, i);
                goto fail;
            }
        }
        ds_status r = chat_render(tok, m, (int)k, true, think, &rendered, err);
        ds_free(m);
        if (r) goto fail;
        if (tokenizer_encode(tok, rendered, strlen(rendered), &ids, &n, err)) goto fail;
    } else if (tokenizer_encode(tok, data, len, &ids, &n, err)) {
        goto fail;
    }
    for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    status = 0;
    goto done;
fail:
    fprintf(stderr, "dspark tokenize: %s\n", err);
done:
    json_decref(root);
    ds_free(ids);
    ds_free(rendered);
    ds_free(data);
    tokenizer_free(tok);
    return status;
}
