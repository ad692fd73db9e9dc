'use strict';
// Convert each line of stdin to camelCase. See the task statement.

function words(line) {
  return line
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .replace(/([A-Z]+)([A-Z][a-z])/g, '$1 $2')
    .split(/[\s_-]+/)
    .filter((w) => w.length > 0);
}

function camel(line) {
  return words(line)
    .map((w, i) => {
      const lower = w.toLowerCase();
      return i === 0 ? lower : lower.charAt(0).toUpperCase() + lower.slice(1);
    })
    .join('');
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  if (input.endsWith('\n')) input = input.slice(0, -1);
  if (input === '') return;
  for (const line of input.split('\n')) console.log(camel(line));
});
