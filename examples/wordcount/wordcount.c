/* wordcount: counts lines, words and bytes on stdin, like `wc`, and prints the most
 * frequent word. The program that paddock's `debian-build` job compiles and tests in a
 * real Debian 12 guest (see fleet.toml and examples/wordcount/README). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WORD 64
#define TABLE 4096

struct entry { char word[MAX_WORD]; unsigned long count; };
static struct entry table[TABLE];

static unsigned long hash(const char *s) {
    unsigned long h = 5381;
    while (*s) h = h * 33 + (unsigned char)*s++;
    return h;
}

static void count_word(const char *w) {
    unsigned long i = hash(w) % TABLE;
    for (unsigned long n = 0; n < TABLE; n++, i = (i + 1) % TABLE) {
        if (table[i].count == 0) {
            strncpy(table[i].word, w, MAX_WORD - 1);
            table[i].count = 1;
            return;
        }
        if (strcmp(table[i].word, w) == 0) {
            table[i].count++;
            return;
        }
    }
}

int main(void) {
    unsigned long lines = 0, words = 0, bytes = 0;
    char word[MAX_WORD];
    size_t len = 0;
    int c;
    while ((c = getchar()) != EOF) {
        bytes++;
        if (c == '\n') lines++;
        if (isalnum(c)) {
            if (len < MAX_WORD - 1) word[len++] = (char)tolower(c);
        } else if (len > 0) {
            word[len] = '\0';
            count_word(word);
            words++;
            len = 0;
        }
    }
    if (len > 0) {
        word[len] = '\0';
        count_word(word);
        words++;
    }
    const struct entry *top = NULL;
    for (int i = 0; i < TABLE; i++) {
        const struct entry *e = &table[i];
        if (e->count && (!top || e->count > top->count || (e->count == top->count && strcmp(e->word, top->word) < 0)))
            top = e;
    }
    printf("%lu %lu %lu %s\n", lines, words, bytes, top ? top->word : "-");
    return 0;
}
