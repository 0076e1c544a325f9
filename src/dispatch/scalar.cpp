// The scalar level of the dispatched entry points (see levels.inc).
#define KVCRUSH_DISPATCH_LEVEL scalar
#include "levels.inc"
