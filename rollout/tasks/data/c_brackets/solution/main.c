#include <stdio.h>
#include <string.h>

#define MAX_LINE 100000

static char line[MAX_LINE + 2];
static int stack_pos[MAX_LINE + 1];
static char stack_ch[MAX_LINE + 1];

static char opener_of(char c) {
  switch (c) {
    case ')': return '(';
    case ']': return '[';
    case '}': return '{';
    default: return 0;
  }
}

int main(void) {
  while (fgets(line, sizeof line, stdin) != NULL) {
    size_t len = strcspn(line, "\r\n");
    int depth = 0;
    int error_col = 0;
    for (size_t i = 0; i < len && error_col == 0; i++) {
      char c = line[i];
      if (c == '(' || c == '[' || c == '{') {
        stack_ch[depth] = c;
        stack_pos[depth] = (int)i + 1;
        depth++;
      } else if (opener_of(c) != 0) {
        if (depth == 0 || stack_ch[depth - 1] != opener_of(c)) {
          error_col = (int)i + 1;
        } else {
          depth--;
        }
      }
    }
    if (error_col == 0 && depth > 0) error_col = stack_pos[0];
    if (error_col == 0) {
      puts("OK");
    } else {
      printf("ERROR %d\n", error_col);
    }
  }
  return 0;
}
