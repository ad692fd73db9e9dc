#include <stdio.h>
#include <stdlib.h>

int main(void) {
  long n;
  if (scanf("%ld", &n) != 1 || n < 0) return 1;
  char* composite = calloc((size_t)n + 2, 1);
  if (composite == NULL) return 1;
  long count = 0;
  int first = 1;
  for (long i = 2; i <= n; i++) {
    if (composite[i]) continue;
    count++;
    for (long j = i * i; j <= n; j += i) composite[j] = 1;
  }
  printf("%ld\n", count);
  for (long i = 2; i <= n && i <= 100; i++) {
    if (composite[i]) continue;
    printf(first ? "%ld" : " %ld", i);
    first = 0;
  }
  putchar('\n');
  free(composite);
  return 0;
}
