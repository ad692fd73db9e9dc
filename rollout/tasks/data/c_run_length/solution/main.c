#include <stdio.h>

static void flush_run(int c, long count) {
  if (count == 0) return;
  putchar(c);
  if (count > 1) printf("%ld", count);
}

int main(void) {
  int prev = EOF;
  long count = 0;
  int c;
  int pending_line = 0;
  while ((c = getchar()) != EOF) {
    if (c == '\n') {
      flush_run(prev, count);
      putchar('\n');
      prev = EOF;
      count = 0;
      pending_line = 0;
      continue;
    }
    pending_line = 1;
    if (c == prev) {
      count++;
    } else {
      flush_run(prev, count);
      prev = c;
      count = 1;
    }
  }
  if (pending_line) {
    flush_run(prev, count);
    putchar('\n');
  }
  return 0;
}
