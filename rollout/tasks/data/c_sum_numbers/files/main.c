#include <stdio.h>

int main(void) {
  /* TODO: implement (see the task statement). */
  return 0;
}
