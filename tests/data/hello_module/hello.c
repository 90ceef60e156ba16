// A trivial module: proves a kernel's headers or tree can build out-of-tree modules.
#include <linux/module.h>

static int __init hello_init(void) { return 0; }
static void __exit hello_exit(void) { }
module_init(hello_init);
module_exit(hello_exit);
MODULE_LICENSE("GPL");
