#include <inttypes.h>
#include <stdio.h>

static uint64_t gcd(uint64_t a, uint64_t b) {
  while (b != 0) {
    uint64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

int main(void) {
  uint64_t a, b;
  while (scanf("%" SCNu64 " %" SCNu64, &a, &b) == 2) {
    uint64_t g = gcd(a, b);
    uint64_t lcm = a / g * b;
    printf("%" PRIu64 " %" PRIu64 "\n", g, lcm);
  }
  return 0;
}
