/** Texts the tokenizer and model-family tests share: English, German, Chinese, Arabic, emoji, code, odd spacing. */
export const MULTILINGUAL: readonly string[] = [
  'The quick brown fox jumps over the lazy dog.',
  'Über den Wolken muss die Freiheit wohl grenzenlos sein; Straße, Fußgänger.',
  '我们今天去公园散步，然后吃了晚饭。',
  'مرحبا بالعالم، كيف حالك اليوم؟',
  'I ❤️ pizza 🍕🍕 and 👩‍👩‍👧 family emoji!',
  'function add(a, b) {\n\treturn a + b; // code\n}\n\nconst x = [1, 2, 3].map((v) => v * 2);',
  '   leading and trailing   spaces\n\nand blank lines  ',
];
