'use strict';
// Convert each line of stdin to camelCase. See the task statement.
process.exitCode = 1;
