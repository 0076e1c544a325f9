// The avx2 level of the dispatched entry points (see levels.inc).
#define KVCRUSH_DISPATCH_LEVEL avx2
#include "levels.inc"
