#include <stdio.h>
#include <string.h>

#define MAX_LINE 4096

int main(void) {
  char line[MAX_LINE + 1];
  char* words[MAX_LINE];
  while (fgets(line, sizeof line, stdin) != NULL) {
    int n = 0;
    for (char* w = strtok(line, " \t\r\n"); w != NULL;
         w = strtok(NULL, " \t\r\n")) {
      words[n++] = w;
    }
    for (int i = n - 1; i >= 0; i--) {
      fputs(words[i], stdout);
      if (i > 0) putchar(' ');
    }
    putchar('\n');
  }
  return 0;
}
