// The avx512 level of the dispatched entry points (see levels.inc).
#define KVCRUSH_DISPATCH_LEVEL avx512
#include "levels.inc"
